"""`manage.py seed_request_log --rows 1000000`: synthetic request-log rows, to try the admin and the
dashboard at scale. For development and benchmarks only: the rows look like real traffic."""

from __future__ import annotations

import math
import random
import time
import uuid
from datetime import timedelta

from django.core.management.base import BaseCommand, CommandError
from django.db import connection, transaction
from django.utils import timezone

from inference.models import RequestLog
from inference.selectors import dashboard_buckets_forget, dashboard_buckets_settle

# Synthetic rows come from TEST-NET-1 (RFC 5737), so they can never be mistaken for a real client.
SYNTHETIC_NETWORK = "192.0.2."
MODEL = "Qwen/Qwen2.5-VL-7B-Instruct"
API_KEYS = ("", "playground", "batch-jobs", "team-vision")
# (weight, status code, error reason) for generate requests: mostly answers, every failure the API knows.
GENERATE_OUTCOMES = (
    (930, 200, ""),
    (30, 400, "validation"),
    (8, 401, "unauthorized"),
    (6, 413, "too_large"),
    (10, 429, "throttled"),
    (8, 503, "overloaded"),
    (4, 504, "timeout"),
    (2, 500, "internal"),
    (2, 499, "cancelled"),
)
PROMPTS = (
    "Describe this image in detail.",
    "What is written on the sign?",
    "Summarise the video in three sentences.",
    "Count the people in the picture.",
    "Is there a defect on this part? Answer yes or no.",
)


class Command(BaseCommand):
    help = "Insert synthetic request-log rows spread over the last days (for trying the admin and dashboard at scale)."

    def add_arguments(self, parser):
        parser.add_argument("--rows", type=int, default=1_000_000, help="how many rows (default 1000000)")
        parser.add_argument("--days", type=float, default=7.0, help="spread them over this many days up to now")
        parser.add_argument("--seed", type=int, default=0, help="random seed, for repeatable data sets")
        parser.add_argument("--batch-size", type=int, default=5000, help="rows per INSERT transaction")

    def handle(self, *args, rows: int, days: float, seed: int, batch_size: int, **options):
        if rows < 0 or days <= 0 or batch_size <= 0:
            raise CommandError("--rows must be >= 0, --days and --batch-size > 0.")
        rng = random.Random(seed)
        end = timezone.now()
        span_s = days * 86400
        started = time.monotonic()
        # Rows are generated in time order (as real traffic arrives), batch by batch, to keep memory flat.
        for first in range(0, rows, batch_size):
            count = min(batch_size, rows - first)
            offsets = sorted(rng.random() * span_s for _ in range(count))
            batch = [
                synthetic_row(rng, received_at=end - timedelta(seconds=span_s - offset), serial=first + index)
                for index, offset in enumerate(offsets)
            ]
            with transaction.atomic():
                RequestLog.objects.bulk_create(batch)
            if first and first % (20 * batch_size) == 0:
                self.stdout.write(f"  {first + count} rows...")
        refresh_planner_statistics()
        elapsed = time.monotonic() - started
        self.stdout.write(self.style.SUCCESS(f"Inserted {rows} synthetic rows over {days:g} days in {elapsed:.1f} s."))
        # What a live server's log writer does as the rows come in (services.write_request_log_batch): the
        # dashboard's finished buckets are worked out, here all at once.
        started = time.monotonic()
        dashboard_buckets_forget(start=end - timedelta(seconds=span_s), end=end)
        settled = dashboard_buckets_settle()
        self.stdout.write(f"Worked out {settled} finished dashboard buckets in {time.monotonic() - started:.1f} s.")


def refresh_planner_statistics() -> None:
    """Bring PostgreSQL to the state autovacuum keeps a live table in. Without statistics and a visibility map
    for a million fresh rows, it planned the dashboard's percentile probes at 40-50 s instead of 0.4-2.4 s.
    SQLite is left as it is: nothing runs ANALYZE on a live server's database either."""
    if connection.vendor != "postgresql":
        return
    table = connection.ops.quote_name(RequestLog._meta.db_table)
    with connection.cursor() as cursor:
        # VACUUM cannot run inside a transaction (a caller's, a test's): ANALYZE alone there.
        cursor.execute(f"{'ANALYZE' if connection.in_atomic_block else 'VACUUM ANALYZE'} {table}")


def synthetic_row(rng: random.Random, *, received_at, serial: int) -> RequestLog:
    """One plausible request: a generate call most of the time, sometimes a VRAM call."""
    roll = rng.random()
    if roll < 0.04:
        return _control_row(rng, received_at, "/vram_status", "GET")
    if roll < 0.045:
        return _control_row(rng, received_at, "/clear_vram", "POST")
    return _generate_row(rng, received_at, serial)


def _base_fields(rng: random.Random, received_at, endpoint: str, method: str) -> dict:
    return {
        # Ids from the OS, not the seeded generator: a second run with the same seed adds rows, never clashes.
        "id": uuid.uuid4(),
        "received_at": received_at,
        "endpoint": endpoint,
        "method": method,
        "client_ip": SYNTHETIC_NETWORK + str(rng.randint(1, 254)),
        "api_key": rng.choice(API_KEYS),
    }


def _control_row(rng: random.Random, received_at, endpoint: str, method: str) -> RequestLog:
    total_ms = rng.uniform(0.5, 5) if method == "GET" else rng.uniform(20, 400)
    return RequestLog(
        **_base_fields(rng, received_at, endpoint, method),
        finished_at=received_at + timedelta(milliseconds=total_ms),
        status_code=200,
        total_ms=total_ms,
    )


def _generate_row(rng: random.Random, received_at, serial: int) -> RequestLog:
    status_code, error_reason = _weighted_outcome(rng)
    num_images = rng.choice((0, 1, 1, 1, 2))
    num_videos = 1 if rng.random() < 0.05 else 0
    max_new_tokens = rng.choice((64, 128, 256, 512))
    row = RequestLog(
        **_base_fields(rng, received_at, "/api/v1/generate", "POST"),
        status_code=status_code,
        model=MODEL,
        max_new_tokens=max_new_tokens,
        temperature=rng.choice((0.0, 0.2, 0.7)),
        top_p=0.9,
        num_messages=rng.choice((1, 1, 2, 3)),
        prompt_preview=f"{rng.choice(PROMPTS)} (synthetic #{serial})",
        num_images=num_images,
        num_videos=num_videos,
        media=[
            {"kind": "image", "sha256": f"{rng.getrandbits(256):064x}", "source": "url", "size": [1280, 960]}
            for _ in range(num_images)
        ],
        error_reason=error_reason,
    )
    if status_code != 200:
        row.total_ms = rng.uniform(1, 50) if status_code < 500 else rng.uniform(100, 30_000)
        row.error_detail = f"synthetic {error_reason} failure"
    else:
        _fill_generation(rng, row, max_new_tokens)
    row.finished_at = received_at + timedelta(milliseconds=row.total_ms)
    return row


def _weighted_outcome(rng: random.Random) -> tuple[int, str]:
    total = sum(weight for weight, _, _ in GENERATE_OUTCOMES)
    pick = rng.uniform(0, total)
    for weight, status_code, reason in GENERATE_OUTCOMES:
        pick -= weight
        if pick <= 0:
            return status_code, reason
    return GENERATE_OUTCOMES[0][1], GENERATE_OUTCOMES[0][2]


def _fill_generation(rng: random.Random, row: RequestLog, max_new_tokens: int) -> None:
    """Tokens and stage timings with the long tails real latency has (log-normal)."""
    row.visual_tokens = row.num_images * rng.randint(256, 1280) + row.num_videos * rng.randint(1000, 4000)
    row.input_tokens = row.visual_tokens + rng.randint(20, 400)
    row.finish_reason = "length" if rng.random() < 0.3 else "stop"
    row.output_tokens = max_new_tokens if row.finish_reason == "length" else rng.randint(1, max_new_tokens)
    row.total_tokens = row.input_tokens + row.output_tokens
    row.batch_size = rng.choice((1, 2, 4, 8, 16))
    row.preprocess_ms = rng.lognormvariate(math.log(30), 0.6) * (1 + row.num_images + 5 * row.num_videos)
    row.queue_ms = rng.lognormvariate(math.log(20), 1.2)
    prefill_ms = row.input_tokens * rng.uniform(0.05, 0.15)
    row.ttft_ms = row.preprocess_ms + row.queue_ms + prefill_ms
    row.output_tokens_per_s = rng.lognormvariate(math.log(35), 0.25)
    row.decode_ms = row.output_tokens / row.output_tokens_per_s * 1000
    row.total_ms = row.ttft_ms + row.decode_ms + rng.uniform(0.2, 2)
