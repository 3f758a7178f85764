"""The request log: one row per API request, successful or not."""

from __future__ import annotations

import uuid

from django.db import models


class RequestLog(models.Model):
    """What was asked, by whom, what it cost and how long each stage took. Never media bytes."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False, verbose_name="request id")
    received_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    endpoint = models.CharField(max_length=100)
    method = models.CharField(max_length=10)
    status_code = models.PositiveSmallIntegerField()
    client_ip = models.GenericIPAddressField(null=True, blank=True)
    api_key = models.CharField(max_length=100, blank=True, help_text="Name of the API key used, if any.")
    model = models.CharField(max_length=200, blank=True)

    max_new_tokens = models.PositiveIntegerField(null=True, blank=True)
    temperature = models.FloatField(null=True, blank=True)
    top_p = models.FloatField(null=True, blank=True)
    num_messages = models.PositiveIntegerField(default=0)
    prompt_preview = models.CharField(max_length=200, blank=True, help_text="Start of the last user text.")

    num_images = models.PositiveIntegerField(default=0)
    num_videos = models.PositiveIntegerField(default=0)
    media = models.JSONField(
        default=list, blank=True, help_text="Per media item: kind, source kind, sha256, width, height."
    )
    visual_tokens = models.PositiveIntegerField(null=True, blank=True)

    input_tokens = models.PositiveIntegerField(null=True, blank=True)
    output_tokens = models.PositiveIntegerField(null=True, blank=True)
    total_tokens = models.PositiveIntegerField(null=True, blank=True)

    queue_ms = models.FloatField(null=True, blank=True)
    preprocess_ms = models.FloatField(null=True, blank=True)
    ttft_ms = models.FloatField("time to first token (ms)", null=True, blank=True)
    decode_ms = models.FloatField(null=True, blank=True)
    total_ms = models.FloatField(null=True, blank=True)
    output_tokens_per_s = models.FloatField(null=True, blank=True)
    batch_size = models.PositiveSmallIntegerField(null=True, blank=True)

    finish_reason = models.CharField(max_length=20, blank=True)
    error_reason = models.CharField(max_length=40, blank=True)
    error_detail = models.TextField(blank=True)

    class Meta:
        ordering = ["-received_at"]
        indexes = [
            # The dashboard reads only these columns over a time window: a covering index lets the
            # database answer from the index alone (a tenth of the table's bytes with a million rows).
            models.Index(
                fields=[
                    "received_at",
                    "status_code",
                    "total_ms",
                    "ttft_ms",
                    "input_tokens",
                    "output_tokens",
                    "output_tokens_per_s",
                ],
                name="requestlog_dashboard_idx",
            ),
            # The admin's filters, each combined with the date order; their leading column also lets the
            # filter choices be read with a skip scan (selectors.request_log_distinct_values).
            models.Index(fields=["status_code", "received_at"]),
            models.Index(fields=["endpoint", "received_at"]),
            models.Index(fields=["model", "received_at"]),
            models.Index(fields=["api_key", "received_at"], name="requestlog_api_key_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.endpoint} {self.status_code} ({self.id})"


class DashboardBucket(models.Model):
    """One finished bucket of a dashboard chart (a minute, ten minutes, an hour), as computed from the request log.

    The rows of a bucket stop changing once no request received in it can still be running: their figures,
    percentiles included, are then worked out once and kept here, so the week's chart reads 167 of these and the
    request log only for its last hour (at a million rows, 0.04 s instead of 3.5 s on SQLite; bench/RESULTS.md).
    Derived data, like a materialized view: the commands that change past request-log rows (prune_request_log,
    seed_request_log) drop the buckets they touch, and a bucket that is not here is computed again.
    """

    bucket_s = models.PositiveIntegerField(help_text="Length of the bucket in seconds.")
    start = models.DateTimeField()
    # Per status code: requests, generations, token sums and decode-speed sums (selectors._dashboard_groups).
    groups = models.JSONField(default=list)
    # "<column>:<percentile>" -> value, e.g. "total_ms:95"; None where the bucket had no generation.
    percentiles = models.JSONField(default=dict)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["bucket_s", "start"], name="dashboardbucket_unique_start")]

    def __str__(self) -> str:
        return f"{self.bucket_s}s bucket at {self.start:%Y-%m-%d %H:%M}"
