"""Rate limits: per key (a key's own rate wins), per staff user, per address when anonymous; 429 with
Retry-After before the body is read; exact counts under concurrency; the cache shared through Redis."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.core.checks import run_checks
from django.core.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.test import APIRequestFactory

from apikeys.models import APIKey
from apikeys.rates import parse_rate
from inference.models import RequestLog
from inference.throttles import ClientRateThrottle

from .media_origin import MediaOrigin
from .redis_cache import redis_url_or_skip
from .samples import image_bytes


@pytest.fixture(params=["locmem", "redis"])
def shared_cache(request, settings) -> str:
    """The default cache as each test runs against it: local memory, and Redis (CACHE_URL=redis://...)."""
    if request.param == "redis":
        location = redis_url_or_skip(15)
        backend = "django.core.cache.backends.redis.RedisCache"
    else:
        location, backend = f"throttle-{uuid.uuid4()}", "django.core.cache.backends.locmem.LocMemCache"
    # A fresh prefix per test: counts left by another test (or run) never leak in.
    settings.CACHES = {"default": {"BACKEND": backend, "LOCATION": location, "KEY_PREFIX": uuid.uuid4().hex}}
    return request.param


def key(name: str, **fields) -> str:
    return APIKey.objects.create_key(name=name, **fields)[1]


def bearer(api_key: str) -> dict:
    return {"Authorization": f"Bearer {api_key}"}


def statuses(api, count: int, path: str = "/vram_status", **headers) -> list[int]:
    return [api.get(path, **headers).status_code for _ in range(count)]


def test_a_key_over_its_rate_gets_429_with_retry_after(api, settings, shared_cache):
    settings.VLM_RATE_LIMIT = "3/min"
    client_key = key("team-a")
    assert statuses(api, 3, **bearer(client_key)) == [200, 200, 200]
    response = api.get("/vram_status", **bearer(client_key))
    assert response.status_code == 429
    assert response.json()["detail"].startswith("Request was throttled. Expected available in ")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    row = RequestLog.objects.get(status_code=429)
    assert (row.error_reason, row.api_key) == ("throttled", "team-a")
    assert RequestLog.objects.count() == 4
    if shared_cache == "redis":  # the counts really are in Redis, where every worker sees them
        prefix = settings.CACHES["default"]["KEY_PREFIX"]
        assert any(b":vlm-throttle:key:" in name for name in cache._cache.get_client().keys(f"{prefix}:*"))


def test_each_key_has_its_own_count_and_its_own_rate_wins(api, settings, shared_cache):
    settings.VLM_RATE_LIMIT = "2/min"
    generous, strict, other = key("generous", rate_limit="5/min"), key("strict", rate_limit="1/min"), key("other")
    assert statuses(api, 6, **bearer(generous)) == [200] * 5 + [429]
    assert statuses(api, 2, **bearer(strict)) == [200, 429]
    assert statuses(api, 3, **bearer(other)) == [200, 200, 429]


def test_anonymous_clients_are_counted_per_address_and_cannot_pick_it(api, client, settings, shared_cache):
    settings.VLM_ANON_RATE_LIMIT = "2/min"
    settings.VLM_RATE_LIMIT = ""  # keys unlimited: anonymous and keyed limits are separate settings
    first = [client.get("/vram_status", REMOTE_ADDR="203.0.113.7").status_code for _ in range(3)]
    spoofed = client.get("/vram_status", REMOTE_ADDR="203.0.113.7", HTTP_X_FORWARDED_FOR="198.51.100.1")
    other = client.get("/vram_status", REMOTE_ADDR="203.0.113.8")
    assert first == [200, 200, 429]
    assert spoofed.status_code == 429  # X-Forwarded-For is not trusted without VLM_NUM_PROXIES
    assert other.status_code == 200
    assert statuses(api, 4, **bearer(key("unlimited"))) == [200] * 4


def test_behind_a_proxy_the_forwarded_address_counts(client, loaded_model, db, settings, shared_cache):
    settings.VLM_ANON_RATE_LIMIT = "1/min"
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "NUM_PROXIES": 1}
    proxy = "10.0.0.2"
    assert client.get("/vram_status", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 200
    assert client.get("/vram_status", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.2").status_code == 200
    assert client.get("/vram_status", REMOTE_ADDR=proxy, HTTP_X_FORWARDED_FOR="203.0.113.1").status_code == 429


def test_staff_sessions_are_counted_per_user(api, client, settings, shared_cache):
    settings.VLM_RATE_LIMIT = "1/min"
    client.force_login(User.objects.create_user("operator", is_staff=True))
    assert statuses(api, 2) == [200, 429]


def test_throttled_before_the_body_is_read_or_media_fetched(api, settings, shared_cache):
    settings.VLM_RATE_LIMIT = "1/min"
    client_key = key("team-a")
    assert api.get("/vram_status", **bearer(client_key)).status_code == 200
    with MediaOrigin({"/cat.png": ("image/png", image_bytes())}) as origin:
        settings.VLM_ALLOW_PRIVATE_MEDIA_URLS = True
        body = {"messages": [{"role": "user", "content": [{"type": "image", "image": origin.url("/cat.png")}]}]}
        assert api.post("/api/v1/generate", body, **bearer(client_key)).status_code == 429
        assert origin.requests == []


def test_no_limit_unless_one_is_set(api, shared_cache):
    assert statuses(api, 25) == [200] * 25


def test_health_is_never_throttled(api, settings, shared_cache):
    settings.VLM_ANON_RATE_LIMIT = "1/min"
    assert statuses(api, 5, path="/health") == [200] * 5


def keyed_request(api_key: APIKey) -> Request:
    request = Request(APIRequestFactory().get("/vram_status"))
    request.user, request.auth = None, api_key
    return request


def test_concurrent_requests_are_counted_exactly(db, settings, shared_cache):
    """40 threads at once against a limit of 10: exactly 10 pass (DRF's list-based throttles let more through)."""
    api_key = APIKey(name="burst", prefix=uuid.uuid4().hex[:8], rate_limit="10/min")
    start = threading.Barrier(40)

    def attempt(_: int) -> bool:
        start.wait()
        return ClientRateThrottle().allow_request(keyed_request(api_key), view=None)

    with ThreadPoolExecutor(40) as pool:
        allowed = list(pool.map(attempt, range(40)))
    assert allowed.count(True) == 10


def test_a_cache_outage_does_not_stop_serving(api, settings, caplog):
    settings.VLM_RATE_LIMIT = "1/min"
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    assert statuses(api, 3, **bearer(key("team-a"))) == [200, 200, 200]
    assert "rate limit not applied: the cache is unavailable" in caplog.text


@pytest.mark.parametrize(
    "text, parsed",
    [("60/min", (60, 60)), ("10/s", (10, 1)), (" 5 / hour ", (5, 3600)), ("100/days", (100, 86400)), ("", None)],
)
def test_rates(text, parsed):
    assert parse_rate(text) == parsed


@pytest.mark.parametrize("text", ["60", "0/min", "-1/min", "ten/min", "60/week", "60/min/x", "1.5/s"])
def test_bad_rates_are_refused_everywhere(text, settings, db):
    with pytest.raises(ValueError):
        parse_rate(text)
    settings.VLM_RATE_LIMIT = text
    assert [error.id for error in run_checks() if error.id.startswith("apikeys.")] == ["apikeys.E001"]
    with pytest.raises(ValidationError):
        APIKey(name="x", rate_limit=text).full_clean(exclude=["id", "prefix", "hashed_key"])
