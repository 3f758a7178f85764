"""The dashboard: its numbers against a plain-Python reference, its buckets, its page and who may see it.

Marked `postgres`: `make test` runs these again on PostgreSQL, where the bucket expression and the
rank queries are different SQL.
"""

from __future__ import annotations

import json
import math
import random
import re
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Permission

from inference.models import RequestLog
from inference.selectors import DASHBOARD_WINDOWS, request_log_dashboard

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

NOW = datetime(2026, 3, 4, 12, 30, 15, 500_000, tzinfo=UTC)
HOUR = DASHBOARD_WINDOWS["hour"]
DASHBOARD = "/admin/dashboard/"


def log_row(received_at: datetime, *, status_code: int = 200, total_ms: float | None = None, **fields) -> RequestLog:
    return RequestLog(
        id=uuid.uuid4(),
        received_at=received_at,
        endpoint="/api/v1/generate",
        method="POST",
        status_code=status_code,
        total_ms=total_ms,
        **fields,
    )


def random_rows(rng: random.Random, count: int, *, start: datetime, seconds: float) -> list[RequestLog]:
    """Traffic with every shape the dashboard meets: answers, refusals, failures with and without timings."""
    rows = []
    for _ in range(count):
        received_at = start + timedelta(microseconds=rng.randrange(int(seconds * 1e6)))
        status_code = rng.choice((200, 200, 200, 200, 400, 404, 429, 503, 504))
        if status_code == 200:
            output_tokens = rng.randint(1, 64)
            rows.append(
                log_row(
                    received_at,
                    total_ms=rng.uniform(10, 5000),
                    ttft_ms=rng.uniform(5, 900),
                    input_tokens=rng.randint(10, 900),
                    output_tokens=output_tokens,
                    output_tokens_per_s=rng.uniform(5, 80),
                )
            )
        else:
            rows.append(log_row(received_at, status_code=status_code, total_ms=rng.uniform(1, 50)))
    return rows


def nearest_rank(values: list[float], percentile: int) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[max(math.ceil(percentile / 100 * len(ordered)), 1) - 1], 3)


def test_every_series_matches_a_python_reference():
    rng = random.Random(7)
    origin = datetime(2026, 3, 4, 11, 31, tzinfo=UTC)  # the hour window ending at NOW starts here
    rows = random_rows(rng, 600, start=origin, seconds=(NOW - origin).total_seconds())
    # Outside the window on both sides: never counted.
    rows += [log_row(origin - timedelta(microseconds=1), total_ms=1.0, ttft_ms=1.0), log_row(NOW, total_ms=1.0)]
    RequestLog.objects.bulk_create(rows)

    dashboard = request_log_dashboard(window=HOUR, now=NOW)

    assert dashboard.start == origin and len(dashboard.series.labels) == 60
    buckets = defaultdict(list)
    for row in rows:
        if origin <= row.received_at < NOW:
            buckets[int((row.received_at - origin).total_seconds() // 60)].append(row)
    series = dashboard.series
    for index in range(60):
        bucket = buckets[index]
        generations = [row for row in bucket if row.ttft_ms is not None]
        for status in series.requests_per_minute:
            assert series.requests_per_minute[status][index] == sum(str(row.status_code) == status for row in bucket)
        errors = sum(row.status_code >= 400 for row in bucket)
        assert series.error_rate[index] == (round(100 * errors / len(bucket), 3) if bucket else None)
        for p in (50, 95):
            assert series.latency_ms[f"p{p}"][index] == nearest_rank([row.total_ms for row in generations], p)
            assert series.ttft_ms[f"p{p}"][index] == nearest_rank([row.ttft_ms for row in generations], p)
        speeds = [row.output_tokens_per_s for row in generations]
        assert series.output_tokens_per_s[index] == (
            pytest.approx(sum(speeds) / len(speeds), abs=1e-3) if speeds else None
        )
        assert series.input_tokens[index] == sum(row.input_tokens or 0 for row in bucket)
        assert series.output_tokens[index] == sum(row.output_tokens or 0 for row in bucket)
        assert series.throughput_tokens_per_s[index] == round(series.output_tokens[index] / 60, 3)
    in_window = [row for row in rows if origin <= row.received_at < NOW]
    totals = dashboard.totals
    assert totals.requests == len(in_window) == 600
    assert totals.errors == sum(row.status_code >= 400 for row in in_window)
    assert totals.server_errors == sum(row.status_code >= 500 for row in in_window)
    assert totals.output_tokens == sum(row.output_tokens or 0 for row in in_window)
    assert set(series.requests_per_minute) == {str(row.status_code) for row in in_window}


def test_rows_fall_in_the_bucket_their_time_says():
    origin = datetime(2026, 3, 4, 11, 31, tzinfo=UTC)
    edges = [
        (origin, 0),
        (origin + timedelta(seconds=59, microseconds=999_999), 0),
        (origin + timedelta(seconds=60), 1),
        (origin + timedelta(minutes=59), 59),
        (NOW - timedelta(microseconds=1), 59),
    ]
    RequestLog.objects.bulk_create([log_row(at, status_code=200) for at, _ in edges])
    counts = request_log_dashboard(window=HOUR, now=NOW).series.requests_per_minute["200"]
    assert [index for index, count in enumerate(counts) for _ in range(int(count))] == [0, 0, 1, 59, 59]


@pytest.mark.parametrize(("key", "buckets", "bucket_s", "last_label"), [
    ("hour", 60, 60, "12:30"), ("day", 144, 600, "12:30"), ("week", 168, 3600, "Wed 12:00"),
])  # fmt: skip
def test_windows_are_cut_into_wall_clock_buckets(key, buckets, bucket_s, last_label):
    dashboard = request_log_dashboard(window=DASHBOARD_WINDOWS[key], now=NOW)
    assert len(dashboard.series.labels) == buckets and dashboard.window.bucket_s == bucket_s
    assert dashboard.series.labels[-1] == last_label
    assert dashboard.start.timestamp() % bucket_s == 0
    assert NOW - dashboard.start < DASHBOARD_WINDOWS[key].span + timedelta(seconds=bucket_s)


def test_an_empty_window_has_no_points():
    dashboard = request_log_dashboard(window=HOUR, now=NOW)
    assert dashboard.totals.requests == 0 and dashboard.totals.error_rate is None
    assert dashboard.series.requests_per_minute == {}
    assert set(dashboard.series.latency_ms["p95"]) == {None} and set(dashboard.series.error_rate) == {None}


# --- the page -----------------------------------------------------------------------------------


@pytest.fixture
def staff(django_user_model):
    user = django_user_model.objects.create_user("viewer", password="a-long-test-password", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_requestlog"))
    return user


def chart_data(response) -> dict:
    match = re.search(rb'<script id="dashboard-data" type="application/json">(.*?)</script>', response.content, re.S)
    assert match, response.content[:500]
    return json.loads(match.group(1))


def test_the_page_charts_real_requests(api, client, staff):
    made = [
        api.post("/api/v1/generate", {"messages": [{"role": "user", "content": "Hi"}], "max_new_tokens": 3}),
        api.post("/api/v1/generate", {"messages": [{"role": "user", "content": "Hello"}], "max_new_tokens": 5}),
        api.post("/api/v1/generate", {"messages": []}),
    ]
    assert [response.status_code for response in made] == [200, 200, 400]
    client.force_login(staff)

    response = client.get(DASHBOARD)

    assert response.status_code == 200
    assert b'id="total-requests">3<' in response.content
    assert b"vendor/chart.js/chart.umd.min.js" in response.content
    data = chart_data(response)
    assert data["window"] == "hour" and data["bucketSeconds"] == 60 and len(data["labels"]) == 60
    assert sum(data["output_tokens"]) == 8
    assert sum(data["requests_per_minute"]["200"]) == 2 and sum(data["requests_per_minute"]["400"]) == 1
    assert [value for value in data["latency_ms"]["p95"] if value] and [
        value for value in data["ttft_ms"]["p50"] if value
    ]


def test_an_unknown_window_shows_the_last_hour(client, staff):
    client.force_login(staff)
    assert chart_data(client.get(DASHBOARD, {"window": "decade"}))["window"] == "hour"
    assert chart_data(client.get(DASHBOARD, {"window": "week"}))["window"] == "week"


def test_the_page_costs_the_same_queries_for_ten_rows_or_a_thousand(client, staff, django_assert_num_queries):
    client.force_login(staff)
    now = datetime.now(UTC)
    rng = random.Random(3)
    for count in (10, 1000):
        RequestLog.objects.all().delete()
        RequestLog.objects.bulk_create(random_rows(rng, count, start=now - timedelta(minutes=50), seconds=2900))
        # The session, the user, the user's and groups' permissions, the (bucket, status) groups, the percentiles.
        with django_assert_num_queries(6):
            assert client.get(DASHBOARD, {"window": "hour"}).status_code == 200


def test_only_staff_who_may_view_the_log_see_it(client, django_user_model, staff):
    anonymous = client.get(DASHBOARD)
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/admin/login/")
    client.force_login(django_user_model.objects.create_user("plain", password="a-long-test-password"))
    assert client.get(DASHBOARD).status_code == 302  # not staff: the admin's login again
    client.force_login(django_user_model.objects.create_user("other-staff", password="x-long-password", is_staff=True))
    assert client.get(DASHBOARD).status_code == 403
    client.force_login(staff)
    assert client.get(DASHBOARD).status_code == 200
