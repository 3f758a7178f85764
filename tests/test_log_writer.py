"""The request-log writer: rows handed over by request threads are all written, in batches, off their threads."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from inference.log_writer import BatchWriter
from inference.models import RequestLog
from inference.services import RequestRecord, request_finish, request_log_writer


def test_every_item_is_written_in_batches_and_flush_waits_for_them():
    batches: list[list[int]] = []

    def slow_write(batch: list[int]) -> None:
        time.sleep(0.01)  # items queue up meanwhile, so the next batch takes several
        batches.append(batch)

    writer = BatchWriter(slow_write, max_batch=50, name="test-writer")
    threads = [threading.Thread(target=lambda n=n: [writer.submit(n * 100 + i) for i in range(100)]) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert writer.flush(timeout=30)
    written = [item for batch in batches for item in batch]
    assert sorted(written) == sorted(n * 100 + i for n in range(8) for i in range(100))
    assert len(batches) < len(written) / 4 and max(map(len, batches)) <= 50
    assert writer.pending == 0


def test_a_failing_batch_does_not_stop_the_writer():
    written: list[str] = []

    def write(batch: list[str]) -> None:
        if "bad" in batch:
            raise RuntimeError("the database went away")
        written.extend(batch)

    writer = BatchWriter(write, name="test-writer")
    writer.submit("bad")
    assert writer.flush(timeout=10)
    writer.submit("good")
    assert writer.flush(timeout=10)
    assert written == ["good"]


def record(request_id: uuid.UUID | None = None) -> RequestRecord:
    return RequestRecord(
        request_id=request_id or uuid.uuid4(),
        received_at=timezone.now(),
        received_monotonic=time.monotonic(),
        endpoint="/api/v1/generate",
        method="POST",
        client_ip="192.0.2.7",
        status_code=400,
        error_reason="validation",
    )


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_rows_from_many_request_threads_are_all_written_by_the_writer_thread(settings):
    settings.VLM_REQUEST_LOG_WRITER = "thread"
    records = [record() for _ in range(320)]
    threads = [threading.Thread(target=lambda part=part: [request_finish(record=r) for r in part]) for part in
               (records[i::32] for i in range(32))]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert request_log_writer.flush(timeout=60)
    assert set(RequestLog.objects.values_list("id", flat=True)) == {r.request_id for r in records}
    row = RequestLog.objects.get(id=records[0].request_id)
    # The times are the response's, not the moment the writer got to the row.
    assert row.finished_at == records[0].finished_at and row.total_ms >= 0


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_batch_with_a_reused_request_id_keeps_every_row(settings):
    """One row that cannot be inserted as it is (its id is on record) costs the rest of its batch nothing."""
    from inference.services import write_request_log

    taken = uuid.uuid4()
    RequestLog.objects.create(
        id=taken, received_at=timezone.now(), endpoint="/api/v1/generate", method="POST", status_code=200
    )
    batch = [record(), record(taken), record()]
    for item in batch:
        item.finished_at, item.finished_monotonic = timezone.now(), time.monotonic()
    write_request_log(records=batch)
    assert RequestLog.objects.count() == 4
    assert RequestLog.objects.filter(id__in=[batch[0].request_id, batch[2].request_id]).count() == 2
    assert RequestLog.objects.filter(client_ip="192.0.2.7").count() == 3


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_writer_thread_works_out_the_dashboards_finished_buckets(settings, monkeypatch):
    from inference import services
    from inference.models import DashboardBucket

    settings.VLM_REQUEST_LOG_WRITER = "thread"
    monkeypatch.setattr(services, "_next_dashboard_settle", 0.0)  # as in a new process: due at the first batch
    earlier = record()
    earlier.received_at -= timedelta(hours=3)
    services.write_request_log(records=[earlier])

    request_finish(record=record())
    assert request_log_writer.flush(timeout=60)

    week = DashboardBucket.objects.filter(bucket_s=3600)
    # The week's hours but the one in progress, and the one before it too in the first 10 minutes of an hour (it
    # settles VLM_REQUEST_TIMEOUT_S, 300 s, plus 5 minutes after it ends).
    assert week.count() in (166, 167)
    (kept,) = [bucket for bucket in week if bucket.groups]
    assert kept.start <= earlier.received_at < kept.start + timedelta(hours=1)
    assert kept.groups[0]["status_code"] == 400 and kept.groups[0]["requests"] == 1
    assert services._next_dashboard_settle > time.monotonic() + 30  # and not again for a minute


@pytest.mark.django_db
def test_a_row_written_after_its_buckets_were_kept_drops_them():
    from inference.models import DashboardBucket
    from inference.selectors import DASHBOARD_WINDOWS, dashboard_buckets_settle, request_log_dashboard
    from inference.services import write_request_log

    dashboard_buckets_settle()
    week = DASHBOARD_WINDOWS["week"]
    assert request_log_dashboard(window=week).totals.requests == 0
    late = record()  # a request that arrived two hours ago and is only now on record
    late.received_at -= timedelta(hours=2)

    write_request_log(records=[late])

    assert not DashboardBucket.objects.filter(
        start__lte=late.received_at, start__gt=late.received_at - timedelta(hours=1)
    ).exists()
    assert request_log_dashboard(window=week).totals.requests == 1


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_an_idle_writer_holds_no_database_connection(settings):
    """With DATABASE_CONN_MAX_AGE=0 (PostgreSQL's default here) the writer closes its connection after each batch,
    as Django does after a request; a connection left open kept the test database from being dropped."""
    from django.db import connection

    if connection.vendor != "postgresql":
        pytest.skip("counts server sessions in pg_stat_activity")
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
    settings.VLM_REQUEST_LOG_WRITER = "thread"

    def other_sessions() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return cursor.fetchone()[0]

    request_finish(record=record())
    assert request_log_writer.flush(timeout=60)

    assert RequestLog.objects.count() == 1
    assert other_sessions() == 0
