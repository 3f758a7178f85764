"""Read queries over the request log, for the admin and the dashboard.

Every aggregate is computed by the database, and every query is shaped to stay fast with a million
rows: Python only ever sees one row per chart point, filter choice or percentile. The heavy queries
are written for the two backends this project supports, SQLite and PostgreSQL.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import NotSupportedError, connection, transaction
from django.db.models import Count, Func, IntegerField, Q, QuerySet, Sum
from django.utils import timezone

from .models import DashboardBucket, RequestLog


@dataclass(frozen=True)
class DashboardWindow:
    key: str
    label: str
    span: timedelta
    bucket: timedelta
    label_format: str  # strftime format of a bucket's start on the time axis

    @property
    def bucket_s(self) -> int:
        return int(self.bucket.total_seconds())


DASHBOARD_WINDOWS = {
    window.key: window
    for window in (
        DashboardWindow("hour", "Last hour", timedelta(hours=1), timedelta(minutes=1), "%H:%M"),
        DashboardWindow("day", "Last day", timedelta(days=1), timedelta(minutes=10), "%H:%M"),
        DashboardWindow("week", "Last week", timedelta(days=7), timedelta(hours=1), "%a %H:%M"),
    )
}
DEFAULT_DASHBOARD_WINDOW = "hour"
PERCENTILES = (50, 95)
PERCENTILE_COLUMNS = ("total_ms", "ttft_ms")
PERCENTILE_KEYS = frozenset(f"{column}:{p}" for column in PERCENTILE_COLUMNS for p in PERCENTILES)
# The columns whose filter choices the admin lists (each leads an index, for the skip scan).
DISTINCT_VALUE_FIELDS = ("status_code", "endpoint", "model", "api_key")


class BucketIndex(Func):
    """The number of the `bucket_s`-second bucket, counted from `origin`, that a datetime falls in.

    Computed in native code on both backends: Django's Trunc() calls a Python function per row on
    SQLite, which alone costs seconds over a million rows. Whole seconds: a bucket's rows are exactly
    those with origin + n*bucket_s <= received_at < origin + (n+1)*bucket_s, as a range query selects.
    """

    output_field = IntegerField()

    def __init__(self, expression, *, origin: datetime, bucket_s: int) -> None:
        super().__init__(expression)
        # Integers computed here, never client input, so they are safe to write into the SQL.
        self.origin_epoch = int(origin.timestamp())
        self.bucket_s = int(bucket_s)

    def as_sqlite(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        # Django stores 'YYYY-MM-DD HH:MM:SS.ffffff'. SQLite's date functions round to milliseconds,
        # which would move a row at HH:MM:59.9996 into the next bucket: cut the text to whole seconds.
        seconds = f"substr({sql}, 1, 19)"
        if connection.Database.sqlite_version_info >= (3, 38):  # unixepoch(): a tenth faster than strftime
            epoch = f"unixepoch({seconds})"
        else:
            epoch, params = f"CAST(strftime(%s, {seconds}) AS INTEGER)", ("%s", *params)  # no `%` to escape in SQL
        return f"(({epoch} - {self.origin_epoch}) / {self.bucket_s})", params

    def as_postgresql(self, compiler, connection, **extra_context):
        sql, params = compiler.compile(self.source_expressions[0])
        return f"FLOOR((EXTRACT(EPOCH FROM {sql}) - {self.origin_epoch}) / {self.bucket_s})::integer", params

    def as_sql(self, compiler, connection, **extra_context):
        raise NotSupportedError(f"BucketIndex supports SQLite and PostgreSQL, not {connection.vendor}.")


# --- the dashboard ------------------------------------------------------------------------------


@dataclass
class DashboardSeries:
    """One value per bucket, oldest first; None where a bucket had nothing to measure."""

    labels: list[str]
    requests_per_minute: dict[str, list[float]]  # by status code
    error_rate: list[float | None]  # % of requests answered 4xx or 5xx
    server_error_rate: list[float | None]  # % answered 5xx
    latency_ms: dict[str, list[float | None]]  # "p50", "p95" of generations, request to response
    ttft_ms: dict[str, list[float | None]]  # the same for time to first token
    output_tokens_per_s: list[float | None]  # mean decode speed of one request
    throughput_tokens_per_s: list[float]  # output tokens of all requests per second of wall time
    input_tokens: list[int]
    output_tokens: list[int]


@dataclass
class DashboardTotals:
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    generations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    @property
    def error_rate(self) -> float | None:
        return _percent(self.errors, self.requests)


@dataclass
class Dashboard:
    window: DashboardWindow
    start: datetime
    end: datetime
    series: DashboardSeries
    totals: DashboardTotals


def request_log_dashboard(*, window: DashboardWindow, now: datetime | None = None) -> Dashboard:
    """The dashboard's charts for the window ending now.

    Finished buckets are read from DashboardBucket; the others (the last few, or all of them the first time a
    window is shown) from the request log in two queries, whatever the row count: one groups them by
    (bucket, status), one reads each bucket's p50 and p95 latency and time to first token by rank
    (nearest-rank percentiles over generations, the rows with a time to first token).
    """
    end = now or timezone.now()
    starts = _window_starts(window, end)
    stats, _ = _bucket_stats(starts=starts, bucket=window.bucket, end=end)

    per_bucket = [_BucketTotals.from_groups(bucket.groups) for bucket in stats]
    totals = _window_totals(per_bucket)

    def percentile_series(column: str, p: int) -> list[float | None]:
        return [bucket.percentiles[f"{column}:{p}"] for bucket in stats]

    # Rates over the whole bucket, the one in progress too: its bar grows as it fills rather than
    # jumping about while only seconds of it have passed.
    bucket_s = window.bucket_s
    minutes = bucket_s / 60
    statuses = sorted(totals.by_status)
    series = DashboardSeries(
        labels=[timezone.localtime(start).strftime(window.label_format) for start in starts],
        requests_per_minute={
            status: [round(bucket.by_status.get(status, 0) / minutes, 3) for bucket in per_bucket]
            for status in statuses
        },
        error_rate=[_percent(bucket.errors, bucket.requests) for bucket in per_bucket],
        server_error_rate=[_percent(bucket.server_errors, bucket.requests) for bucket in per_bucket],
        latency_ms={f"p{p}": percentile_series("total_ms", p) for p in PERCENTILES},
        ttft_ms={f"p{p}": percentile_series("ttft_ms", p) for p in PERCENTILES},
        output_tokens_per_s=[bucket.mean_tokens_per_s for bucket in per_bucket],
        throughput_tokens_per_s=[round(bucket.output_tokens / bucket_s, 3) for bucket in per_bucket],
        input_tokens=[bucket.input_tokens for bucket in per_bucket],
        output_tokens=[bucket.output_tokens for bucket in per_bucket],
    )
    return Dashboard(window=window, start=starts[0], end=end, series=series, totals=totals)


def dashboard_buckets_settle(*, now: datetime | None = None) -> int:
    """Work out and keep every finished bucket of every window that is not kept yet; returns how many.

    The request-log writer calls this once a minute, so the dashboard finds its buckets ready however long
    nobody looked at it; the dashboard keeps what it had to compute itself as well. Buckets older than their
    window are dropped.
    """
    end = now or timezone.now()
    settled_before = end - dashboard_settle_delay()
    added = 0
    shown = Q()
    for window in DASHBOARD_WINDOWS.values():
        starts = _window_starts(window, end)
        shown |= Q(bucket_s=window.bucket_s, start__gte=starts[0])
        finished = [start for start in starts if start + window.bucket <= settled_before]
        if finished:
            added += _bucket_stats(starts=finished, bucket=window.bucket, end=end)[1]
    # Only what a window can show is kept: the table stays at a few hundred rows, however long the log.
    DashboardBucket.objects.exclude(shown).delete()
    return added


def dashboard_buckets_forget(*, start: datetime | None, end: datetime) -> int:
    """Drop the kept buckets that overlap [start, end) (start None: everything before `end`), after request-log
    rows in it changed; returns how many.

    prune_request_log and seed_request_log call it, and so does the log writer for a row written later than
    dashboard_settle_delay() after its request arrived. A dropped bucket is worked out again when next needed."""
    overlapping = DashboardBucket.objects.filter(start__lt=end)
    if start is not None:
        widest = max(window.bucket for window in DASHBOARD_WINDOWS.values())
        overlapping = overlapping.filter(start__gt=start - widest)
    deleted, _ = overlapping.delete()
    return deleted


# A bucket is finished when no request received in it can still be running and waiting for its row to be written:
# requests end by their deadline, VLM_REQUEST_TIMEOUT_S after they arrive (media fetches have deadlines of their
# own, tens of seconds), and their rows are written within seconds of the response. Five minutes of slack cover
# the fetches, a slow client reading a stream and the log writer; a row later than that drops its buckets
# (services.write_request_log).
DASHBOARD_SETTLE_SLACK = timedelta(minutes=5)


def dashboard_settle_delay() -> timedelta:
    return timedelta(seconds=settings.VLM_REQUEST_TIMEOUT_S) + DASHBOARD_SETTLE_SLACK


def _window_starts(window: DashboardWindow, end: datetime) -> list[datetime]:
    """The starts of the window's buckets, on wall-clock boundaries (whole minutes, ten minutes, hours), oldest
    first; the last one is the bucket in progress."""
    bucket_s = window.bucket_s
    buckets = math.ceil(window.span.total_seconds() / bucket_s)
    origin_epoch = (math.floor(end.timestamp()) // bucket_s - (buckets - 1)) * bucket_s
    origin = datetime.fromtimestamp(origin_epoch, tz=UTC)
    return [origin + i * window.bucket for i in range(buckets)]


@dataclass(frozen=True)
class _BucketStats:
    groups: list[dict]  # per status code, as _dashboard_groups returns them (without "bucket")
    percentiles: dict[str, float | None]  # "<column>:<percentile>" -> value


def _bucket_stats(*, starts: Sequence[datetime], bucket: timedelta, end: datetime) -> tuple[list[_BucketStats], int]:
    """The stats of the consecutive buckets at `starts` (cut at `end`): the kept ones from DashboardBucket, the
    rest from the request log, then kept where they are finished; and how many were added to those kept."""
    bucket_s = int(bucket.total_seconds())
    found: list[_BucketStats | None] = [None] * len(starts)
    index_of = {start: index for index, start in enumerate(starts)}
    kept = DashboardBucket.objects.filter(bucket_s=bucket_s, start__gte=starts[0], start__lte=starts[-1])
    for start, groups, percentiles in kept.values_list("start", "groups", "percentiles"):
        index = index_of.get(start)
        # A bucket kept before PERCENTILES changed lacks the new ones: worked out again.
        if index is not None and PERCENTILE_KEYS <= percentiles.keys():
            found[index] = _BucketStats(groups=groups, percentiles=percentiles)
    missing = [index for index, stats in enumerate(found) if stats is None]
    if not missing:
        return found, 0

    # The missing buckets are usually the last few: one range query from the first of them covers all.
    by_bucket: dict[int, list[dict]] = {index: [] for index in missing}
    with _planned_without_jit():
        for group in _dashboard_groups(
            origin=starts[0], start=starts[missing[0]], end=min(starts[-1] + bucket, end), bucket_s=bucket_s
        ):
            index = group.pop("bucket")
            if index in by_bucket:
                by_bucket[index].append(group)
        ranges = [(starts[index], min(starts[index] + bucket, end)) for index in missing]
        counts = [sum(group["generations"] for group in by_bucket[index]) for index in missing]
        percentiles = _bucket_percentiles(ranges=ranges, counts=counts)
    for position, index in enumerate(missing):
        found[index] = _BucketStats(
            groups=by_bucket[index], percentiles={key: values[position] for key, values in percentiles.items()}
        )

    settled_before = timezone.now() - dashboard_settle_delay()
    finished = [index for index in missing if starts[index] + bucket <= min(end, settled_before)]
    # ignore_conflicts: two dashboards (or a dashboard and the log writer) may work out the same bucket at once.
    DashboardBucket.objects.bulk_create(
        [
            DashboardBucket(
                bucket_s=bucket_s, start=starts[index], groups=found[index].groups, percentiles=found[index].percentiles
            )
            for index in finished
        ],
        ignore_conflicts=True,
    )
    return found, len(finished)


@contextmanager
def _planned_without_jit() -> Iterator[None]:
    """PostgreSQL's JIT (on by default) compiles each of the percentile statement's hundreds of subqueries: a week
    of a million rows took 10.2 s with it and 2.7 s without. Off for this transaction only; SQLite has no JIT (and
    a transaction there would take the write lock)."""
    if connection.vendor != "postgresql":
        yield
        return
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL jit = off")
        yield


@dataclass
class _BucketTotals:
    requests: int = 0
    errors: int = 0
    server_errors: int = 0
    generations: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    tokens_per_s_sum: float = 0.0
    tokens_per_s_count: int = 0
    by_status: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_groups(cls, groups: Sequence[dict]) -> _BucketTotals:
        totals = cls()
        for group in groups:
            totals.add(group)
        return totals

    def add(self, group: dict) -> None:
        status_code, requests = group["status_code"], group["requests"]
        self.requests += requests
        self.errors += requests if status_code >= 400 else 0
        self.server_errors += requests if status_code >= 500 else 0
        self.generations += group["generations"]
        self.input_tokens += group["input_tokens"] or 0
        self.output_tokens += group["output_tokens"] or 0
        self.tokens_per_s_sum += group["tokens_per_s_sum"] or 0.0
        self.tokens_per_s_count += group["tokens_per_s_count"]
        self.by_status[str(status_code)] = self.by_status.get(str(status_code), 0) + requests

    @property
    def mean_tokens_per_s(self) -> float | None:
        if not self.tokens_per_s_count:
            return None
        return round(self.tokens_per_s_sum / self.tokens_per_s_count, 3)


def _window_totals(per_bucket: Sequence[_BucketTotals]) -> DashboardTotals:
    totals = DashboardTotals()
    for bucket in per_bucket:
        totals.requests += bucket.requests
        totals.errors += bucket.errors
        totals.server_errors += bucket.server_errors
        totals.generations += bucket.generations
        totals.input_tokens += bucket.input_tokens
        totals.output_tokens += bucket.output_tokens
        for status, requests in bucket.by_status.items():
            totals.by_status[status] = totals.by_status.get(status, 0) + requests
    return totals


def _percent(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 3) if whole else None


def _dashboard_groups(*, origin: datetime, start: datetime, end: datetime, bucket_s: int) -> list[dict]:
    """Counts and sums per (bucket, status code) of the rows received in [start, end), buckets numbered from
    `origin`: a few hundred rows for any window.

    The columns read are all in `requestlog_dashboard_idx`, so the database scans that index only.
    """
    return list(
        RequestLog.objects.filter(received_at__gte=start, received_at__lt=end)
        .annotate(bucket=BucketIndex("received_at", origin=origin, bucket_s=bucket_s))
        .values("bucket", "status_code")
        .annotate(
            requests=Count("*"),
            generations=Count("ttft_ms"),
            input_tokens=Sum("input_tokens"),
            output_tokens=Sum("output_tokens"),
            tokens_per_s_sum=Sum("output_tokens_per_s"),
            tokens_per_s_count=Count("output_tokens_per_s"),
        )
        .order_by()
    )


def _bucket_percentiles(
    *, ranges: Sequence[tuple[datetime, datetime]], counts: Sequence[int]
) -> dict[str, list[float | None]]:
    """p50 and p95 of latency and time to first token per bucket, in one statement.

    Each percentile is the generation at rank ceil(p/100 * n) of its bucket (n counted by the first
    query), read with ORDER BY ... LIMIT 1 OFFSET over the bucket's range of the dashboard index.
    The order runs from the nearer end, so the database keeps at most half a bucket in its sort heap.
    (SQLite's window functions, PERCENT_RANK and friends, took over a second per column for a
    million rows; this takes under one for both columns.)
    """
    result: dict[str, list[float | None]] = {key: [None] * len(ranges) for key in PERCENTILE_KEYS}
    wanted: list[tuple[str, int, int]] = []
    parts: list[str] = []
    params: list = []
    for index, ((start, stop), count) in enumerate(zip(ranges, counts, strict=True)):
        if not count:
            continue
        bounds = [connection.ops.adapt_datetimefield_value(start), connection.ops.adapt_datetimefield_value(stop)]
        for column in PERCENTILE_COLUMNS:
            for p in PERCENTILES:
                rank = max(math.ceil(p / 100 * count), 1) - 1  # 0-based
                descending = rank >= count / 2
                parts.append(_rank_probe_sql(column, descending=descending))
                params += [*bounds, count - 1 - rank if descending else rank]
                wanted.append((column, p, index))
    for (column, p, index), value in zip(wanted, _select_scalars(parts, params), strict=True):
        result[f"{column}:{p}"][index] = None if value is None else round(value, 3)
    return result


def _rank_probe_sql(column: str, *, descending: bool) -> str:
    """One generation's `column` at a rank (OFFSET) within a received_at range: a scalar subquery.

    Written out rather than built by the ORM: the dashboard needs hundreds of them per page, and
    compiling a queryset for each cost a quarter of a second.
    """
    quote = connection.ops.quote_name
    table, value = quote(RequestLog._meta.db_table), quote(column)
    received, ttft = quote("received_at"), quote("ttft_ms")
    return (
        f"SELECT {value} FROM {table} WHERE {received} >= %s AND {received} < %s AND {ttft} IS NOT NULL"
        f" ORDER BY {value} {'DESC' if descending else 'ASC'} LIMIT 1 OFFSET %s"
    )


def _select_scalars(parts: Sequence[str], params: Sequence) -> tuple:
    """`SELECT (part1), (part2), ...`: each scalar subquery's value, in one round trip."""
    if not parts:
        return ()
    with connection.cursor() as cursor:
        cursor.execute("SELECT " + ", ".join(f"({part})" for part in parts), params)
        return cursor.fetchone()


def _scalar_subqueries(querysets: Sequence[QuerySet]) -> tuple:
    """The first column of each queryset's first row, in one round trip (the ORM's SQL and parameters)."""
    parts, params = [], []
    for queryset in querysets:
        sql, part_params = queryset.query.sql_with_params()
        parts.append(sql)
        params.extend(part_params)
    return _select_scalars(parts, params)


# --- the admin ----------------------------------------------------------------------------------


def request_log_distinct_values(*, field_name: str) -> list:
    """The distinct values of an indexed column, sorted: the admin's filter choices.

    A recursive skip scan: each step asks the index for the next larger value, so the cost grows with
    the number of distinct values, not rows (SELECT DISTINCT reads the whole index: 0.1 s per filter
    with a million rows, on every page of the admin list).
    """
    if field_name not in DISTINCT_VALUE_FIELDS:
        raise ValueError(f"{field_name!r} has no index to skip-scan; one of {DISTINCT_VALUE_FIELDS}")
    quote = connection.ops.quote_name
    table, column = quote(RequestLog._meta.db_table), quote(RequestLog._meta.get_field(field_name).column)
    sql = (
        f"WITH RECURSIVE seen(value) AS ("
        f" SELECT MIN({column}) FROM {table}"
        f" UNION ALL"
        f" SELECT (SELECT MIN({column}) FROM {table} WHERE {column} > seen.value) FROM seen"
        f" WHERE seen.value IS NOT NULL"
        f") SELECT value FROM seen WHERE value IS NOT NULL"
    )
    with connection.cursor() as cursor:
        cursor.execute(sql)
        return [value for (value,) in cursor.fetchall()]


def request_log_periods_with_rows(*, queryset: QuerySet, periods: Sequence[tuple[datetime, datetime]]) -> list[bool]:
    """For each [start, end) period, whether the queryset has a row received in it.

    One index probe per period, all in one statement, where the admin's own date hierarchy (SELECT
    DISTINCT of truncated dates) reads every row of the range and, on SQLite, calls a Python function
    on each (3 s with a million rows).
    """
    probes = []
    for start, end in periods:
        # The period's bounds come first in the WHERE clause: given two ranges on received_at (the
        # admin's own date filters are in `queryset`), SQLite's planner seeks the index by the first.
        period = RequestLog.objects.filter(received_at__gte=start, received_at__lt=end)
        if queryset.query.distinct:
            period = period.distinct()
        probes.append((period & queryset).order_by().values("pk")[:1])
    return [value is not None for value in _scalar_subqueries(probes)]


def request_log_received_range(*, queryset: QuerySet) -> tuple[datetime | None, datetime | None]:
    """The first and last received_at of the queryset (two index lookups)."""
    first = queryset.order_by("received_at").values_list("received_at", flat=True).first()
    last = queryset.order_by("-received_at").values_list("received_at", flat=True).first()
    return first, last


def request_log_export_rows(*, queryset: QuerySet) -> Iterator[tuple]:
    """The header and then every row of the queryset, every field, streamed from the database in chunks."""
    names = [model_field.name for model_field in RequestLog._meta.concrete_fields]
    yield tuple(names)
    yield from queryset.order_by("-received_at", "-pk").values_list(*names).iterator(chunk_size=2000)
