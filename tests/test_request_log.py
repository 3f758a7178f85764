"""The request log: what a row holds, that every outcome writes one, that none is lost under 32
concurrent clients of the real gunicorn server, and the retention and seeding commands.

Marked `postgres`: `make test` runs these again with DATABASE_URL on the PostgreSQL server.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from io import StringIO

import psycopg
import pytest
import requests
from django.conf import settings as django_settings
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.throttling import BaseThrottle

from inference.models import DashboardBucket, RequestLog
from inference.runtime import runtime
from inference.selectors import DASHBOARD_WINDOWS, request_log_dashboard
from inference.views import GenerateApi

from .samples import data_uri, image_bytes
from .servers import gunicorn

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

GENERATE = "/api/v1/generate"


def ask(text: str = "hi", **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_new_tokens": 3, **extra}


def test_an_answer_is_on_record_with_every_field(api):
    raw = image_bytes((64, 48))
    body = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "image", "image": data_uri(raw)}, {"type": "text", "text": "What?"}]},
        ],
        "max_new_tokens": 5,
        "temperature": 0.2,
        "top_p": 0.8,
    }
    before = timezone.now()
    response = api.post(GENERATE, body)
    assert response.status_code == 200, response.content
    answer = response.json()

    row = RequestLog.objects.get()
    assert str(row.id) == answer["request_id"] == response.headers["X-Request-ID"]
    assert before <= row.received_at <= row.finished_at <= timezone.now()
    assert (row.endpoint, row.method, row.status_code, row.client_ip) == (GENERATE, "POST", 200, "127.0.0.1")
    assert (row.api_key, row.model) == ("", runtime.model_name)
    assert (row.max_new_tokens, row.temperature, row.top_p, row.num_messages) == (5, 0.2, 0.8, 2)
    assert row.prompt_preview == "What?"
    assert (row.num_images, row.num_videos) == (1, 0)
    [item] = row.media
    assert item["sha256"] == hashlib.sha256(raw).hexdigest() and item["size"] == [64, 48]
    assert "image" not in item and len(str(row.media)) < 400  # the hash and sizes, never the bytes
    assert row.visual_tokens > 0 and row.input_tokens > row.visual_tokens
    usage = answer["usage"]
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (
        usage["input_tokens"], 5, usage["total_tokens"],
    )  # fmt: skip
    timings = answer["timings"]
    assert row.queue_ms == pytest.approx(timings["queue_ms"], abs=0.01)
    assert row.preprocess_ms == pytest.approx(timings["preprocess_ms"], abs=0.01)
    assert row.ttft_ms == pytest.approx(timings["time_to_first_token_ms"], abs=0.01)
    assert row.decode_ms == pytest.approx(timings["decode_ms"], abs=0.01)
    assert row.total_ms == pytest.approx(timings["total_ms"], abs=0.01)
    assert row.output_tokens_per_s == pytest.approx(5 / (row.decode_ms / 1000))
    assert row.finish_reason == "length" and (row.error_reason, row.error_detail) == ("", "")


def test_a_client_request_id_is_kept_only_when_it_is_a_uuid(api):
    sent = str(uuid.uuid4())
    assert api.post(GENERATE, ask(), **{"X-Request-ID": sent}).headers["X-Request-ID"] == sent
    replaced = api.post(GENERATE, ask(), **{"X-Request-ID": "trace-42"}).headers["X-Request-ID"]
    assert replaced != "trace-42" and uuid.UUID(replaced)
    assert {str(row.id) for row in RequestLog.objects.all()} == {sent, replaced}


def test_the_preview_is_the_first_200_characters_of_the_last_user_text(api, settings):
    long_text = "".join(f"{index:04d}" for index in range(100))
    body = {"messages": [{"role": "user", "content": "first"}, {"role": "assistant", "content": "ok"},
                         {"role": "user", "content": long_text}], "max_new_tokens": 2}  # fmt: skip
    api.post(GENERATE, body)
    settings.VLM_LOG_PROMPTS = False
    api.post(GENERATE, ask("a secret prompt"))
    logged, private = RequestLog.objects.order_by("received_at")
    assert logged.prompt_preview == long_text[:200]
    assert private.prompt_preview == "" and private.num_messages == 1


class AlwaysThrottled(BaseThrottle):
    def allow_request(self, request, view) -> bool:
        return False

    def wait(self) -> float:
        return 7


class RefusingAuthentication:
    def authenticate(self, request):
        raise AuthenticationFailed("Invalid API key.")

    def authenticate_header(self, request) -> str:
        return "Bearer"


def _broken_prepare(conversation):
    raise RuntimeError("backend exploded")


# (status, error reason, request body, how the failure is brought about)
FAILURES = [
    (400, "validation", {"messages": []}, None),
    (401, "unauthorized", ask(), lambda mp, s: mp.setattr(GenerateApi, "authentication_classes", [RefusingAuthentication])),
    (404, "not_found", None, None),
    (413, "too_large", ask("x" * 3000), lambda mp, s: setattr(s, "VLM_MAX_BODY_BYTES", 1000)),
    (429, "throttled", ask(), lambda mp, s: mp.setattr(GenerateApi, "throttle_classes", [AlwaysThrottled])),
    (500, "internal", ask(), lambda mp, s: mp.setattr(runtime.backend, "prepare", _broken_prepare)),
    (503, "not_loaded", ask(), lambda mp, s: mp.setattr(runtime, "state", "loading")),
    (504, "timeout", ask(max_new_tokens=3000), lambda mp, s: setattr(s, "VLM_REQUEST_TIMEOUT_S", 0.3)),
]  # fmt: skip


@pytest.mark.parametrize(("status", "reason", "body", "fault"), FAILURES, ids=[str(f[0]) for f in FAILURES])
def test_every_failure_is_on_record(api, monkeypatch, settings, status, reason, body, fault):
    if fault:
        fault(monkeypatch, settings)
    response = api.post(GENERATE, body) if body is not None else api.get("/api/v1/no-such-endpoint")
    assert response.status_code == status, response.content

    row = RequestLog.objects.get()
    assert str(row.id) == response.headers["X-Request-ID"]
    assert (row.status_code, row.error_reason) == (status, reason)
    assert row.error_detail and row.total_ms > 0 and row.finished_at >= row.received_at
    assert row.output_tokens is None and row.finish_reason == ""


def test_vram_calls_are_on_record_and_health_metrics_admin_are_not(api, client):
    cleared, status = api.post("/clear_vram", {}), api.get("/vram_status")
    for path in ("/health", "/metrics", "/admin/login/"):
        client.get(path)
    rows = {(row.method, row.endpoint, row.status_code, row.model) for row in RequestLog.objects.all()}
    assert rows == {("POST", "/clear_vram", cleared.status_code, ""), ("GET", "/vram_status", status.status_code, "")}


# --- durability under concurrency ----------------------------------------------------------------

CLIENTS = 32
ROUNDS = 2
# 503: the small queue below refuses some; 401: /clear_vram wants an admin key. Both on record too.
ALLOWED_STATUSES = {200, 400, 401, 404, 413, 503}


def _scratch_database(workdir) -> tuple[str, Callable[[], dict[uuid.UUID, int]], Callable[[], None]]:
    """A fresh database of the kind the tests run on: (DATABASE_URL, count rows by id, drop)."""
    database = django_settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        path = workdir / "durable.sqlite3"

        def rows() -> dict[uuid.UUID, int]:
            with sqlite3.connect(path) as connection:
                return {
                    uuid.UUID(i): s for i, s in connection.execute("SELECT id, status_code FROM inference_requestlog")
                }

        return f"sqlite:///{path}", rows, lambda: None
    name = f"vlm_durability_{uuid.uuid4().hex[:12]}"
    server = {"host": database["HOST"], "port": database["PORT"] or 5432, "user": database["USER"]}
    with psycopg.connect(dbname="postgres", autocommit=True, **server) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')

    def rows() -> dict[uuid.UUID, int]:
        with psycopg.connect(dbname=name, **server) as connection:
            return dict(connection.execute("SELECT id, status_code FROM inference_requestlog").fetchall())

    def drop() -> None:
        with psycopg.connect(dbname="postgres", autocommit=True, **server) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"postgres://{server['user']}@{server['host']}:{server['port']}/{name}", rows, drop


def _client_requests(base: str, client: int) -> list[requests.Response]:
    """One client's traffic: answers with and without an image, and three kinds of refusal.

    Each request on a connection of its own: this test is about rows, not keep-alive. The oversized
    one says `Connection: close`: a client that keeps the connection open after a 413 stalls
    gunicorn's main loop for 2 s while it drains the unread body (reported to the middleware's owner).
    """
    image = {
        "messages": [{"role": "user", "content": [{"type": "image", "image": data_uri(image_bytes())}, {"type": "text", "text": "?"}]}],
        "max_new_tokens": 2,
    }  # fmt: skip
    responses = []
    for round_ in range(ROUNDS):
        responses += [
            requests.post(
                f"{base}{GENERATE}", json=ask(f"client {client}, round {round_}", max_new_tokens=2), timeout=120
            ),
            requests.post(f"{base}{GENERATE}", json=image, timeout=120),
            requests.post(f"{base}{GENERATE}", json={"messages": []}, timeout=120),
            requests.get(f"{base}/api/v1/no-such-endpoint", timeout=120),
            requests.post(f"{base}{GENERATE}", json=ask("x" * 70_000), headers={"Connection": "close"}, timeout=120),
        ]
        if client % 8 == 0:
            responses.append(requests.post(f"{base}/clear_vram", timeout=120))
    return responses


def test_32_concurrent_clients_lose_no_row(tiny_model_path, tmp_path):
    database_url, stored_rows, drop = _scratch_database(tmp_path)
    try:
        with gunicorn(
            tmp_path, model=str(tiny_model_path), DATABASE_URL=database_url, VLM_THREADS="48",
            VLM_MAX_QUEUE="24", VLM_MAX_BODY_BYTES="65536",
        ) as server:  # fmt: skip
            start = threading.Barrier(CLIENTS)

            def client(number: int) -> list[requests.Response]:
                start.wait()  # all 32 begin together
                return _client_requests(server.base, number)

            with ThreadPoolExecutor(CLIENTS) as pool:
                responses = [response for batch in pool.map(client, range(CLIENTS)) for response in batch]
            log = server.log()
        rows = stored_rows()
    finally:
        drop()

    statuses = Counter(response.status_code for response in responses)
    assert set(statuses) <= ALLOWED_STATUSES, statuses  # never a 500
    assert statuses[400] == statuses[404] == statuses[413] == CLIENTS * ROUNDS
    answered_or_refused = statuses[200] + statuses[401] + statuses[503]
    assert statuses[200] >= CLIENTS and answered_or_refused == (2 * CLIENTS + CLIENTS // 8) * ROUNDS
    sent = {uuid.UUID(response.headers["X-Request-ID"]): response.status_code for response in responses}
    assert len(sent) == len(responses) == CLIENTS * ROUNDS * 5 + 4 * ROUNDS
    assert rows == sent  # every request on record, with the status its client saw
    assert "database is locked" not in log and "could not write the request log row" not in log


# --- retention and seeding -----------------------------------------------------------------------


def _row(age: timedelta) -> RequestLog:
    return RequestLog(
        id=uuid.uuid4(), received_at=timezone.now() - age, endpoint=GENERATE, method="POST", status_code=200
    )


def test_prune_deletes_rows_older_than_the_age_given(db):
    RequestLog.objects.bulk_create([_row(timedelta(days=days)) for days in (1, 29, 31, 45, 400)])
    out = StringIO()
    call_command("prune_request_log", "--older-than", "30d", "--batch-size", "2", stdout=out)
    assert "Deleted 3 request-log rows" in out.getvalue()
    ages = sorted((timezone.now() - row.received_at).days for row in RequestLog.objects.all())
    assert ages == [1, 29]
    call_command("prune_request_log", "--older-than", "36h", stdout=StringIO())
    assert RequestLog.objects.count() == 1


def test_prune_by_default_keeps_the_retention_setting(db, settings):
    RequestLog.objects.bulk_create([_row(timedelta(days=days)) for days in (5, 9, 20)])
    settings.VLM_LOG_RETENTION_DAYS = 0
    call_command("prune_request_log", stdout=StringIO())
    assert RequestLog.objects.count() == 3
    settings.VLM_LOG_RETENTION_DAYS = 7
    out = StringIO()
    call_command("prune_request_log", "--dry-run", stdout=out)
    assert "Would delete 2 rows" in out.getvalue() and RequestLog.objects.count() == 3
    call_command("prune_request_log", stdout=StringIO())
    assert RequestLog.objects.count() == 1


@pytest.mark.parametrize("age", ["30", "30 days", "-1d", "1w"])
def test_prune_refuses_an_age_it_cannot_read(db, age):
    with pytest.raises(CommandError, match="not an age"):
        call_command("prune_request_log", f"--older-than={age}", stdout=StringIO())


def test_seed_inserts_plausible_rows_spread_over_the_days_asked(db):
    out = StringIO()
    call_command("seed_request_log", "--rows", "600", "--days", "2", "--batch-size", "250", stdout=out)
    rows = list(RequestLog.objects.all())
    assert len(rows) == 600
    now = timezone.now()
    assert all(now - timedelta(days=2, seconds=5) <= row.received_at <= now for row in rows)
    assert all(row.client_ip.startswith("192.0.2.") for row in rows)  # TEST-NET-1: never a real client
    statuses = Counter(row.status_code for row in rows)
    assert statuses[200] > 450 and len(statuses) >= 5
    answers = [row for row in rows if row.status_code == 200 and row.endpoint == GENERATE]
    assert all(row.ttft_ms < row.total_ms and row.output_tokens and row.output_tokens_per_s for row in answers)
    # As a live server's log writer would have done over those days: the dashboard's finished buckets are ready.
    kept = DashboardBucket.objects.count()
    assert kept >= 49 + 142 + 166 and f"Worked out {kept} finished dashboard buckets" in out.getvalue()
    week = request_log_dashboard(window=DASHBOARD_WINDOWS["week"])
    assert week.totals.requests == 600
