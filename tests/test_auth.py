"""API keys: the header forms, VLM_REQUIRE_API_KEY, /clear_vram's admin rule, staff sessions, the commands and
the admin. Through the real middleware, DRF and pipeline on the tiny model (Django's test client)."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from apikeys.models import APIKey
from inference.auth import APIKeyAuthentication
from inference.models import RequestLog

from .media_origin import MediaOrigin
from .samples import image_bytes

GENERATE = "/api/v1/generate"
HELLO = {"messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 1}


@pytest.fixture
def key(db) -> str:
    return APIKey.objects.create_key(name="team-a")[1]


@pytest.fixture
def keys_required(settings):
    settings.VLM_REQUIRE_API_KEY = True


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def only_row() -> RequestLog:
    return RequestLog.objects.get()


# --- keys optional (the default) ----------------------------------------------------------------------------


def test_keys_are_optional_by_default(api):
    response = api.post(GENERATE, HELLO)
    assert response.status_code == 200, response.content
    assert (only_row().status_code, only_row().api_key) == (200, "")


@pytest.mark.parametrize(
    "header, value",
    [
        ("Authorization", "Bearer {key}"),
        ("Authorization", "bearer {key}"),
        ("X-API-Key", "{key}"),
        ("Authorization", "Api-Key {key}"),  # djangorestframework-api-key's own form
    ],
)
def test_every_header_form_authenticates_and_names_the_key_in_the_log(api, key, keys_required, header, value):
    response = api.post(GENERATE, HELLO, **{header: value.format(key=key)})
    assert response.status_code == 200, response.content
    assert (only_row().status_code, only_row().api_key) == (200, "team-a")


@pytest.mark.parametrize(
    "presented",
    [
        "abcdefgh." + "a" * 32,  # unknown prefix
        "{prefix}." + "w" * 32,  # a real prefix, a wrong secret
    ],
)
@pytest.mark.parametrize("required", [False, True])
def test_a_wrong_key_is_401_even_where_keys_are_optional(api, key, settings, presented, required):
    settings.VLM_REQUIRE_API_KEY = required
    value = presented.format(prefix=key.partition(".")[0])
    response = api.post(GENERATE, HELLO, Authorization=f"Bearer {value}")
    assert response.status_code == 401
    assert response.json() == {"detail": "Invalid API key.", "request_id": response["X-Request-ID"]}
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    row = only_row()
    assert (row.status_code, row.error_reason, row.api_key) == (401, "unauthorized", "")


@pytest.mark.parametrize("placeholder", ["EMPTY", "sk-no-key-required", "{key}x", "not a key at all", ""])
def test_a_placeholder_is_ignored_where_keys_are_optional_and_refused_where_required(api, key, settings, placeholder):
    """OpenAI clients must send some key (vLLM's docs say "EMPTY"): without required keys they are anonymous."""
    header = {"Authorization": f"Bearer {placeholder.format(key=key)}"}
    assert api.post(GENERATE, HELLO, **header).status_code == 200
    settings.VLM_REQUIRE_API_KEY = True
    refused = api.post(GENERATE, HELLO, **header)
    assert (refused.status_code, refused.json()["detail"]) == (401, "Invalid API key.")
    assert [(row.status_code, row.api_key) for row in RequestLog.objects.order_by("received_at")] == [
        (200, ""),
        (401, ""),
    ]


def test_revoked_and_expired_keys_are_refused(api, db):
    revoked, revoked_key = APIKey.objects.create_key(name="old")
    revoked.revoked = True
    revoked.save()
    expired_key = APIKey.objects.create_key(name="temp", expiry_date=timezone.now() - timedelta(seconds=1))[1]
    assert api.post(GENERATE, HELLO, **bearer(revoked_key)).json()["detail"] == "Invalid API key."
    assert api.post(GENERATE, HELLO, **bearer(expired_key)).json()["detail"] == "This API key has expired."
    assert list(RequestLog.objects.values_list("status_code", flat=True)) == [401, 401]


def test_only_a_hash_is_stored(key):
    stored = APIKey.objects.get()
    prefix, _, secret = key.partition(".")
    assert stored.prefix == prefix
    assert secret not in stored.hashed_key and secret not in stored.id
    assert stored.hashed_key.startswith("sha512$$")


def test_authenticating_a_key_costs_one_query(key, django_assert_num_queries):
    request = Request(APIRequestFactory().get("/vram_status", HTTP_X_API_KEY=key))
    with django_assert_num_queries(1):
        assert APIKeyAuthentication().authenticate(request)[1].name == "team-a"


# --- keys required --------------------------------------------------------------------------------------


def test_required_keys_refuse_a_request_without_one_before_its_media_is_fetched(api, keys_required):
    with MediaOrigin({"/cat.png": ("image/png", image_bytes())}) as origin:
        body = {"messages": [{"role": "user", "content": [{"type": "image", "image": origin.url("/cat.png")}]}]}
        response = api.post(GENERATE, body)
        assert origin.requests == []
    assert response.status_code == 401
    assert response.json() == {
        "detail": "An API key is required: send it as `Authorization: Bearer <key>` or `X-API-Key: <key>`.",
        "request_id": response["X-Request-ID"],
    }
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="api"'
    row = only_row()
    assert (row.endpoint, row.status_code, row.error_reason) == (GENERATE, 401, "unauthorized")
    assert row.error_detail == response.json()["detail"]


def test_vram_status_follows_the_setting_and_health_stays_open(api, key, settings):
    assert api.get("/vram_status").status_code == 200
    settings.VLM_REQUIRE_API_KEY = True
    assert api.get("/vram_status").status_code == 401
    assert api.get("/vram_status", **bearer(key)).status_code == 200
    assert api.get("/health").status_code == 200
    assert api.get("/health", Authorization="Bearer nonsense").status_code == 200  # never even looked at
    assert [row.status_code for row in RequestLog.objects.order_by("received_at")] == [200, 401, 200]


def test_the_openai_endpoints_get_the_same_policy_by_default(api, key, keys_required):
    assert api.get("/v1/models").status_code == 401
    assert api.get("/v1/models", **bearer(key)).status_code == 200


def test_a_staff_session_counts_as_a_key(api, client, keys_required):
    client.force_login(User.objects.create_user("operator", is_staff=True))
    assert api.post(GENERATE, HELLO).status_code == 200


def test_a_session_of_a_user_who_is_not_staff_does_not(api, client, keys_required):
    client.force_login(User.objects.create_user("visitor"))
    response = api.post(GENERATE, HELLO)
    assert response.status_code == 403
    assert (only_row().status_code, only_row().error_reason) == (403, "forbidden")


# --- /clear_vram: an admin key or a staff session, always ---------------------------------------------------


@pytest.mark.parametrize("required", [False, True])
def test_clear_vram_needs_an_admin_key(api, key, admin_key, settings, required):
    settings.VLM_REQUIRE_API_KEY = required
    anonymous = api.post("/clear_vram", {})
    assert anonymous.status_code == 401
    assert anonymous.json()["detail"].startswith("This endpoint needs an admin API key or a staff session.")
    plain = api.post("/clear_vram", {}, **bearer(key))
    assert plain.status_code == 403
    assert plain.json()["detail"] == "This endpoint needs an admin API key or a staff session."
    assert api.post("/clear_vram", {}, **bearer(admin_key)).status_code == 200
    rows = RequestLog.objects.order_by("received_at")
    assert [(row.status_code, row.error_reason, row.api_key) for row in rows] == [
        (401, "unauthorized", ""),
        (403, "forbidden", "team-a"),
        (200, "", "test admin"),
    ]


def test_clear_vram_from_a_staff_session_needs_the_csrf_token(loaded_model, db):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(User.objects.create_user("operator", is_staff=True))
    without_token = browser.post("/clear_vram", content_type="application/json")
    assert without_token.status_code == 403
    assert "CSRF" in without_token.json()["detail"]
    browser.get("/admin/")  # sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    assert (
        browser.post("/clear_vram", content_type="application/json", headers={"X-CSRFToken": token}).status_code == 200
    )
    nobody = Client(enforce_csrf_checks=True)
    nobody.force_login(User.objects.create_user("visitor"))
    nobody.get("/admin/login/")
    visitor_token = nobody.cookies["csrftoken"].value
    refused = nobody.post("/clear_vram", content_type="application/json", headers={"X-CSRFToken": visitor_token})
    assert refused.status_code == 403


# --- the commands and the admin -----------------------------------------------------------------------------


def create_key_command(*args: str) -> tuple[str, str]:
    out, err = StringIO(), StringIO()
    call_command("create_api_key", *args, stdout=out, stderr=err)
    return out.getvalue().strip(), err.getvalue()


def test_create_api_key_prints_the_key_once_and_it_works(api, settings):
    settings.VLM_REQUIRE_API_KEY = True
    key, message = create_key_command("ci-bot", "--admin", "--rate-limit", "600/min", "--expires-in-days", "30")
    stored = APIKey.objects.get()
    assert (stored.name, stored.is_admin, stored.rate_limit) == ("ci-bot", True, "600/min")
    assert timedelta(days=29) < stored.expiry_date - timezone.now() <= timedelta(days=30)
    assert key.startswith(stored.prefix + ".") and stored.prefix in message and key not in message
    assert api.post("/clear_vram", {}, **bearer(key)).status_code == 200


@pytest.mark.parametrize(
    "args, problem",
    [
        (["x", "--rate-limit", "lots"], "rate_limit: not a rate such as 60/min"),
        (["x", "--expires-in-days", "0"], "--expires-in-days must be at least 1"),
        (["x" * 51], "name: Ensure this value has at most 50 characters"),
    ],
)
def test_create_api_key_refuses_bad_arguments(db, args, problem):
    with pytest.raises(CommandError, match=problem):
        create_key_command(*args)
    assert not APIKey.objects.exists()


def test_revoke_api_key(api, key):
    prefix = key.partition(".")[0]
    call_command("revoke_api_key", prefix, stderr=StringIO())
    assert api.post(GENERATE, HELLO, **bearer(key)).status_code == 401
    with pytest.raises(CommandError, match="no API key has the prefix"):
        call_command("revoke_api_key", "nothere0")


def test_keys_are_created_and_revoked_in_the_admin(client, db):
    client.force_login(User.objects.create_superuser("admin", "admin@example.com", "pw"))
    assert client.get("/admin/rest_framework_api_key/apikey/").status_code == 404  # the stock model is hidden
    response = client.post(
        "/admin/apikeys/apikey/add/", {"name": "partner", "is_admin": "on", "rate_limit": "100/h"}, follow=True
    )
    assert response.status_code == 200
    stored = APIKey.objects.get()
    shown = [str(message) for message in response.context["messages"]]
    assert any(f"The API key for partner is: {stored.prefix}." in message for message in shown), shown
    assert (stored.is_admin, stored.rate_limit) == (True, "100/h")
    change = f"/admin/apikeys/apikey/{stored.pk}/change/"
    client.post(change, {"name": "partner", "is_admin": "on", "rate_limit": "100/h", "revoked": "on"})
    assert APIKey.objects.get().revoked
    changelist = client.get("/admin/apikeys/apikey/")
    assert changelist.status_code == 200 and b"partner" in changelist.content
    refused = client.post("/admin/apikeys/apikey/add/", {"name": "bad", "rate_limit": "fast"})
    assert refused.status_code == 200 and APIKey.objects.count() == 1  # the form shows the error
