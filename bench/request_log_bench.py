"""The request log at scale: write throughput under concurrent writers, and the dashboard at a million rows.

    .venv/bin/python bench/request_log_bench.py                     # SQLite, in a temporary file
    .venv/bin/python bench/request_log_bench.py --database postgres://postgres@127.0.0.1:5432/vlm_bench

Writes: --writers threads (32) write --writes rows through the server's own path, `services.request_finish`, which
the request-log middleware calls once a response is sent (metrics included): once with VLM_REQUEST_LOG_WRITER=inline
(each thread inserts its row) and once with the default, `thread` (one writer thread per process inserts what has
queued, in batches). It reports rows/s until the last row is in the table, the time a request thread spends at
p50 and p99, the writes that failed (logged as errors, "database is locked" among them), and checks that every row
is in the table.

Dashboard: seeds --rows synthetic rows over the last 7 days (`manage.py seed_request_log`, which also works out the
dashboard's finished buckets, as a live server's log writer does once a minute), then renders /admin/dashboard/ for
each window as a staff user through Django's test client (the database's aggregates plus the template), and reports
the time of each: as served, with the finished buckets kept, and cold, with them dropped before each render, so every
bucket is worked out from the rows.

The PostgreSQL database is created when it does not exist and emptied of request-log rows before the run.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


class ErrorCounter(logging.Handler):
    """Counts the errors the request-log path logs instead of raising (a lost row is logged, never raised)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.count = 0
        self.first = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        self.first = self.first or self.format(record)


def create_postgres_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    maintenance = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(maintenance, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def measure_writes(writers: int, count: int, mode: str) -> dict:
    """`count` rows from `writers` threads at once through request_finish, with VLM_REQUEST_LOG_WRITER=`mode`;
    the time runs until the last row is in the table (the writer flushed)."""
    from django.conf import settings
    from django.db import connections
    from django.utils import timezone

    from inference.models import RequestLog
    from inference.services import RequestRecord, request_finish, request_log_writer

    settings.VLM_REQUEST_LOG_WRITER = mode
    RequestLog.objects.all().delete()
    errors = ErrorCounter()
    for name in ("inference.services", "inference.log_writer"):
        logging.getLogger(name).addHandler(errors)
    durations: list[list[float]] = [[] for _ in range(writers)]
    start = threading.Barrier(writers + 1)

    def write(index: int) -> None:
        start.wait()
        try:
            for _ in range(count // writers):
                record = RequestRecord(
                    request_id=uuid.uuid4(),
                    received_at=timezone.now(),
                    received_monotonic=time.monotonic(),
                    endpoint="/api/v1/generate",
                    method="POST",
                    client_ip="192.0.2.1",
                    status_code=200,
                    num_messages=1,
                    prompt_preview="What is in this image?",
                )
                began = time.perf_counter()
                request_finish(record=record)
                durations[index].append(time.perf_counter() - began)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(index,)) for index in range(writers)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.monotonic()
    for thread in threads:
        thread.join()
    request_log_writer.flush()
    elapsed = time.monotonic() - began
    every = sorted(duration for per_writer in durations for duration in per_writer)
    stored = RequestLog.objects.count()
    for name in ("inference.services", "inference.log_writer"):
        logging.getLogger(name).removeHandler(errors)
    return {
        "mode": mode,
        "attempted": len(every),
        "stored": stored,
        "errors": errors.count,
        "first_error": errors.first,
        "rows_per_s": stored / elapsed,
        "p50_ms": statistics.median(every) * 1000,
        "p99_ms": every[int(len(every) * 0.99)] * 1000,
    }


def measure_dashboard(rows: int, repeats: int) -> dict[str, dict[str, float]]:
    """Seconds per render of each window: with the finished buckets kept (as a live server has them, and the seed
    command leaves them), and cold, every bucket worked out from the rows (the first view after they are dropped)."""
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from django.test import Client

    from inference.models import DashboardBucket
    from inference.selectors import DASHBOARD_WINDOWS

    print(f"seeding {rows} rows ...", flush=True)
    began = time.monotonic()
    out = StringIO()
    call_command("seed_request_log", rows=rows, stdout=out)
    print(f"  seeded in {time.monotonic() - began:.0f} s: " + " ".join(out.getvalue().split()), flush=True)
    user, _ = get_user_model().objects.get_or_create(
        username="bench-staff", defaults={"is_staff": True, "is_superuser": True}
    )
    client = Client()
    client.force_login(user)

    def render(key: str) -> float:
        began = time.perf_counter()
        response = client.get("/admin/dashboard/", {"window": key})
        elapsed = time.perf_counter() - began
        assert response.status_code == 200, response.status_code
        return elapsed

    timings: dict[str, dict[str, float]] = {"kept": {}, "cold": {}}
    for key in DASHBOARD_WINDOWS:
        timings["kept"][key] = statistics.median(render(key) for _ in range(repeats))
    for key in DASHBOARD_WINDOWS:
        samples = []
        for _ in range(repeats):
            DashboardBucket.objects.all().delete()
            samples.append(render(key))
        timings["cold"][key] = statistics.median(samples)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", default="", help="DATABASE_URL (default: SQLite in a temporary file)")
    parser.add_argument("--writers", type=int, default=32)
    parser.add_argument("--writes", type=int, default=16000, help="rows written in each mode")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows for the dashboard (0: skip it)")
    parser.add_argument("--repeats", type=int, default=3, help="renders of each dashboard window")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="vlm-log-bench-") as tmp:
        database = args.database or f"sqlite:///{tmp}/bench.sqlite3"
        if database.startswith(("postgres://", "postgresql://")):
            create_postgres_database(database)
        os.environ["DATABASE_URL"] = database
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vlmsite.settings")
        os.environ.setdefault("SECRET_KEY", "request-log-bench")
        os.environ["LOG_LEVEL"] = "WARNING"

        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        from inference.models import RequestLog

        RequestLog.objects.all().delete()
        engine = "PostgreSQL" if "postgres" in database else "SQLite"

        results = []
        for mode in ("inline", "thread"):
            print(
                f"{engine}: {args.writes} rows from {args.writers} threads, VLM_REQUEST_LOG_WRITER={mode} ...",
                flush=True,
            )
            writes = measure_writes(args.writers, args.writes, mode)
            results.append(writes)
            print(
                f"  {writes['rows_per_s']:.0f} rows/s; {writes['stored']} rows stored of {writes['attempted']} written; "
                f"{writes['errors']} errors; a request thread's part p50 {writes['p50_ms']:.2f} ms, "
                f"p99 {writes['p99_ms']:.2f} ms",
                flush=True,
            )
            if writes["errors"]:
                print(f"  first error: {writes['first_error']}", flush=True)
        inline, threaded = results
        print(f"  writer thread / inline, rows/s: {threaded['rows_per_s'] / inline['rows_per_s']:.1f}x", flush=True)
        if args.rows:
            RequestLog.objects.all().delete()
            timings = measure_dashboard(args.rows, args.repeats)
            for state, described in (("kept", "finished buckets kept"), ("cold", "every bucket from the rows")):
                for key, seconds in timings[state].items():
                    print(
                        f"  dashboard, {key} window, {args.rows} rows, {described}: {seconds:.2f} s "
                        f"(median of {args.repeats})"
                    )
        if any(writes["errors"] or writes["stored"] != writes["attempted"] for writes in results):
            sys.exit(1)


if __name__ == "__main__":
    main()
