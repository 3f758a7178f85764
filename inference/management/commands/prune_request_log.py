"""`manage.py prune_request_log [--older-than 30d]`: delete old request-log rows.

Without --older-than it keeps VLM_LOG_RETENTION_DAYS days (0: keep everything), so a scheduled run
(cron, a systemd timer, a Kubernetes CronJob) needs no arguments.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from inference.models import RequestLog
from inference.selectors import dashboard_buckets_forget

AGE_PATTERN = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
AGE_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_age(text: str) -> timedelta:
    """'30d', '12h' or '90m' as a timedelta."""
    match = AGE_PATTERN.match(text)
    if not match:
        raise ValueError(f"{text!r} is not an age like 30d, 12h or 90m")
    amount, unit = match.groups()
    return timedelta(**{AGE_UNITS[unit]: int(amount)})


def request_log_prune(*, before: datetime, batch_size: int = 5000) -> int:
    """Delete the rows received before `before`, a batch per transaction, and return how many.

    Small batches keep each write lock short: on SQLite, request threads writing their rows wait for
    the lock (busy timeout) rather than for the whole purge.
    """
    deleted = 0
    old_rows = RequestLog.objects.filter(received_at__lt=before).order_by()
    while True:
        batch = list(old_rows.values_list("pk", flat=True)[:batch_size])
        if not batch:
            dashboard_buckets_forget(start=None, end=before)
            return deleted
        count, _ = RequestLog.objects.filter(pk__in=batch).delete()
        deleted += count


class Command(BaseCommand):
    help = (
        "Delete request-log rows received before a given age (default: VLM_LOG_RETENTION_DAYS days; "
        "0 keeps all). Meant for a daily scheduled run."
    )

    def add_arguments(self, parser):
        parser.add_argument("--older-than", help="age like 30d, 12h or 90m (default: VLM_LOG_RETENTION_DAYS days)")
        parser.add_argument("--batch-size", type=int, default=5000, help="rows deleted per transaction")
        parser.add_argument("--dry-run", action="store_true", help="only count the rows that would be deleted")

    def handle(self, *args, older_than: str | None, batch_size: int, dry_run: bool, **options):
        if batch_size <= 0:
            raise CommandError("--batch-size must be positive.")
        if older_than is None:
            if settings.VLM_LOG_RETENTION_DAYS <= 0:
                self.stdout.write("VLM_LOG_RETENTION_DAYS is 0: keeping every row.")
                return
            age = timedelta(days=settings.VLM_LOG_RETENTION_DAYS)
        else:
            try:
                age = parse_age(older_than)
            except ValueError as error:
                raise CommandError(str(error)) from error
        before = timezone.now() - age
        if dry_run:
            count = RequestLog.objects.filter(received_at__lt=before).count()
            self.stdout.write(f"Would delete {count} rows received before {before:%Y-%m-%d %H:%M:%S %Z}.")
            return
        deleted = request_log_prune(before=before, batch_size=batch_size)
        self.stdout.write(
            self.style.SUCCESS(f"Deleted {deleted} request-log rows received before {before:%Y-%m-%d %H:%M:%S %Z}.")
        )
