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
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.db import connection

from inference.models import DashboardBucket, RequestLog
from inference.selectors import (
    DASHBOARD_WINDOWS,
    dashboard_buckets_forget,
    dashboard_buckets_settle,
    request_log_dashboard,
)

pytestmark = [pytest.mark.postgres, pytest.mark.django_db]

NOW = datetime(2026, 3, 4, 12, 30, 15, 500_000, tzinfo=UTC)
HOUR = DASHBOARD_WINDOWS["hour"]
DASHBOARD = "/admin/dashboard/"


def reading_the_log(queries: int) -> int:
    """The queries of a render that reads the request log: PostgreSQL's run in a transaction with JIT off, three
    more here (SAVEPOINT inside the test's transaction, SET LOCAL, RELEASE)."""
    return queries + (3 if connection.vendor == "postgresql" else 0)


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


def test_the_page_costs_the_same_queries_for_ten_rows_or_a_thousand(
    client, staff, django_assert_num_queries, django_assert_max_num_queries
):
    client.force_login(staff)
    now = datetime.now(UTC)
    rng = random.Random(3)
    for count in (10, 1000):
        RequestLog.objects.all().delete()
        DashboardBucket.objects.all().delete()
        RequestLog.objects.bulk_create(random_rows(rng, count, start=now - timedelta(minutes=50), seconds=2900))
        # The session, the user, the user's and groups' permissions; the kept buckets (none yet), the (bucket,
        # status) groups, the percentiles; the finished buckets kept.
        with django_assert_num_queries(reading_the_log(8)):
            assert client.get(DASHBOARD, {"window": "hour"}).status_code == 200
        # Then only the buckets that are not finished are read from the log (no percentiles if none of them
        # holds a generation), and nothing is kept.
        with django_assert_max_num_queries(reading_the_log(7)):
            assert client.get(DASHBOARD, {"window": "hour"}).status_code == 200


# --- finished buckets, kept -------------------------------------------------------------------------


WEEK = DASHBOARD_WINDOWS["week"]


def week_of_rows(rng: random.Random, count: int) -> list[RequestLog]:
    start = NOW - timedelta(days=7)
    return RequestLog.objects.bulk_create(random_rows(rng, count, start=start, seconds=7 * 86400))


def as_compared(dashboard) -> tuple:
    return asdict(dashboard.series), asdict(dashboard.totals)


def test_kept_buckets_chart_what_the_rows_say(django_assert_num_queries):
    week_of_rows(random.Random(11), 3000)
    worked_out = request_log_dashboard(window=WEEK, now=NOW)
    # NOW is long past: every bucket but the one in progress is finished, and kept.
    assert DashboardBucket.objects.filter(bucket_s=3600).count() == 167

    with django_assert_num_queries(
        reading_the_log(3)
    ):  # the kept buckets; the groups and percentiles of the last bucket only
        kept = request_log_dashboard(window=WEEK, now=NOW)

    assert as_compared(kept) == as_compared(worked_out)
    assert kept.totals.requests == RequestLog.objects.filter(received_at__gte=kept.start, received_at__lt=NOW).count()


def test_a_bucket_is_kept_only_once_no_request_in_it_can_still_be_running(settings):
    settings.VLM_REQUEST_TIMEOUT_S = 600
    now = datetime.now(UTC)
    RequestLog.objects.bulk_create(random_rows(random.Random(5), 200, start=now - timedelta(hours=1), seconds=3600))

    request_log_dashboard(window=HOUR, now=now)
    after = datetime.now(UTC)

    kept = sorted(DashboardBucket.objects.filter(bucket_s=60).values_list("start", flat=True))
    # 600 s of deadline and 5 minutes for the fetches, the client and the log writer: the last bucket kept ended
    # at least 15 minutes before the render, and the next one had not.
    delay = timedelta(minutes=15)
    assert kept and kept[-1] + timedelta(minutes=1) <= after - delay
    assert kept[-1] + timedelta(minutes=2) > now - delay
    assert len(kept) == len(set(kept))


def test_rows_changed_behind_its_back_show_once_their_buckets_are_forgotten():
    rows = week_of_rows(random.Random(12), 2000)
    before = request_log_dashboard(window=WEEK, now=NOW).totals.requests
    old = [row for row in rows if row.received_at < NOW - timedelta(days=2)]
    RequestLog.objects.filter(pk__in=[row.pk for row in old[:10]]).delete()
    # The kept buckets still count them: they are derived data, dropped by whoever changes past rows.
    assert request_log_dashboard(window=WEEK, now=NOW).totals.requests == before

    deleted = sorted(row.received_at for row in old[:10])
    dashboard_buckets_forget(start=deleted[0], end=deleted[-1] + timedelta(microseconds=1))

    assert request_log_dashboard(window=WEEK, now=NOW).totals.requests == before - 10


def test_settling_works_out_every_window_ahead_of_the_page(django_assert_num_queries):
    week_of_rows(random.Random(13), 1500)

    added = dashboard_buckets_settle(now=NOW)

    # All but the buckets that end in the last 10 minutes before NOW (VLM_REQUEST_TIMEOUT_S, 300 s, and 5
    # minutes of slack): the last 11 of the hour's minutes, 2 of the day's ten minutes, 1 of the week's hours.
    assert added == 49 + 142 + 167
    assert dashboard_buckets_settle(now=NOW) == 0
    # A week on, the buckets of NOW's windows are out of every window and dropped: a few hundred rows at most.
    dashboard_buckets_settle(now=NOW + timedelta(days=7, hours=1))
    assert not DashboardBucket.objects.filter(start__lt=NOW).exists()
    assert DashboardBucket.objects.count() <= 60 + 144 + 168

    dashboard_buckets_settle(now=NOW)
    with django_assert_num_queries(
        reading_the_log(3)
    ):  # the kept buckets; the groups and percentiles of the last hour only
        request_log_dashboard(window=WEEK, now=NOW)


def test_pruning_drops_the_buckets_of_the_rows_it_deletes():
    now = datetime.now(UTC)
    RequestLog.objects.bulk_create(
        random_rows(random.Random(14), 900, start=now - timedelta(days=3), seconds=3 * 86400)
    )
    dashboard_buckets_settle(now=now)
    assert DashboardBucket.objects.filter(start__lt=now - timedelta(days=1)).exists()

    call_command("prune_request_log", "--older-than", "1d", stdout=StringIO())

    cut = datetime.now(UTC) - timedelta(days=1)
    assert not DashboardBucket.objects.filter(start__lt=cut).exists()
    assert DashboardBucket.objects.filter(start__gte=cut).exists()
    week = request_log_dashboard(window=WEEK)
    assert week.totals.requests == RequestLog.objects.filter(received_at__gte=week.start).count() < 900
