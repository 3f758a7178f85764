"""Business logic between the thin views and the engine: generation, VRAM control, the request record.

Media is fetched and decoded here, in the request thread, before the job is queued, so the model
never waits on the network; only the engine's worker touches the model.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, close_old_connections, transaction
from django.utils import timezone

from monitoring import metrics

from . import media, selectors
from .backend import MemoryStats, memory_stats, resolve_device
from .engine import GenerationResult, Job
from .errors import InvalidRequest, MediaError
from .log_writer import BatchWriter, flush_at_exit
from .models import RequestLog
from .runtime import runtime
from .sampling import RowSampling
from .streaming import TextStream

logger = logging.getLogger(__name__)

PREVIEW_CHARS = 200
# Endpoints whose rows name the model: the spec's and OpenAI's.
GENERATION_ENDPOINTS = ("/generate", "/chat/completions")


@dataclass
class RequestRecord:
    """What the request log row will hold, filled in as the request goes through the layers."""

    request_id: uuid.UUID
    received_at: datetime
    received_monotonic: float
    endpoint: str
    method: str
    client_ip: str | None
    status_code: int = 0
    api_key: str = ""
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    num_messages: int = 0
    prompt_preview: str = ""
    media: list[dict] = field(default_factory=list)
    result: GenerationResult | None = None
    error_reason: str = ""
    error_detail: str = ""
    # Set when the response is done, so a row written later by the log writer keeps the true times.
    finished_at: datetime | None = None
    finished_monotonic: float | None = None

    @property
    def num_images(self) -> int:
        return sum(item["kind"] == "image" for item in self.media)

    @property
    def num_videos(self) -> int:
        return sum(item["kind"] == "video" for item in self.media)


def media_policy() -> media.MediaPolicy:
    """The media loader's limits, from settings (built per request: cheap, and tests override settings)."""
    return media.MediaPolicy(
        allowed_root=settings.VLM_ALLOWED_MEDIA_ROOT,
        allow_private_urls=settings.VLM_ALLOW_PRIVATE_MEDIA_URLS,
        allowed_domains=tuple(settings.VLM_ALLOWED_MEDIA_DOMAINS),
        max_image_bytes=settings.VLM_MAX_IMAGE_BYTES,
        max_video_bytes=settings.VLM_MAX_VIDEO_BYTES,
        image_deadline_s=settings.VLM_IMAGE_FETCH_TIMEOUT_S,
        video_deadline_s=settings.VLM_VIDEO_FETCH_TIMEOUT_S,
        max_image_pixels=settings.VLM_MAX_PIXELS,
        min_image_pixels=settings.VLM_MIN_PIXELS,
        video_fps=settings.VLM_VIDEO_FPS,
        max_video_frames=settings.VLM_MAX_VIDEO_FRAMES,
        max_video_seconds=settings.VLM_MAX_VIDEO_SECONDS,
    )


@dataclass
class Generation:
    """A queued generation: the engine's job, and its text as it is generated when someone reads it
    (streaming) or matches stop strings in it; None otherwise, so plain requests cost the worker nothing."""

    job: Job
    text: TextStream | None


def generation_start(
    *,
    record: RequestRecord,
    messages: list[dict],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    stop: Sequence[str] = (),
    seed: int | None = None,
    stream: bool = False,
) -> Generation:
    """Validate limits, load media, prepare inputs and queue the job; return without waiting.

    Everything that can refuse a request happens here, so a streamed response starts only once the
    request is known to be acceptable: its errors keep their status codes.
    """
    record.max_new_tokens, record.temperature, record.top_p = max_new_tokens, temperature, top_p
    record.num_messages = len(messages)
    if settings.VLM_LOG_PROMPTS:
        record.prompt_preview = _last_user_text(messages)[:PREVIEW_CHARS]
    engine = runtime.engine_or_raise()
    # Refuse before any media is fetched or decoded: the cheap checks first.
    engine.check_capacity()
    _check_media_counts(messages)
    started = time.monotonic()
    conversation = _load_media(messages, record)
    row = runtime.backend.prepare(conversation)
    runtime.backend.check_fits(row, max_new_tokens)
    preprocess_s = time.monotonic() - started
    metrics.PREPROCESS_TIME.labels(runtime.model_name).observe(preprocess_s)
    job = Job(
        row=row,
        sampling=RowSampling(temperature=temperature, top_p=top_p),
        max_new_tokens=max_new_tokens,
        received_at=record.received_monotonic,
        preprocess_s=preprocess_s,
        deadline=record.received_monotonic + settings.VLM_REQUEST_TIMEOUT_S,
        seed=seed,
        request_id=str(record.request_id),
    )
    text = TextStream(runtime.backend.decode, stop=stop) if stream or stop else None
    if text is not None:
        text.attach(job)
    engine.submit(job)
    return Generation(job=job, text=text)


def generation_result(
    *, record: RequestRecord, generation: Generation, client_gone: Callable[[], bool] | None = None
) -> GenerationResult:
    """Wait for the whole answer of a started generation (its text cut at a stop string)."""
    result = generation.job.result(client_gone=client_gone)
    record.result = generation.text.final(result) if generation.text else result
    return record.result


def generation_deltas(
    *, record: RequestRecord, generation: Generation, client_gone: Callable[[], bool] | None = None
) -> Iterator[str]:
    """The answer of a generation started with `stream=True`, as text deltas while it is generated.
    Once exhausted, `record.result` holds the result; the job's errors are raised."""
    record.result = yield from generation.text.deltas(generation.job, client_gone=client_gone)


def generation_run(
    *,
    record: RequestRecord,
    messages: list[dict],
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    client_gone: Callable[[], bool] | None = None,
) -> GenerationResult:
    """Validate limits, load media, prepare inputs, queue the job and wait for its result."""
    generation = generation_start(
        record=record, messages=messages, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p
    )
    return generation_result(record=record, generation=generation, client_gone=client_gone)


def _last_user_text(messages: list[dict]) -> str:
    for message in reversed(messages):
        if message["role"] != "user":
            continue
        content = message["content"]
        if isinstance(content, str):
            return content
        return " ".join(item["text"] for item in content if item["type"] == "text")
    return ""


def _media_items(messages: list[dict]):
    """(location, item) for every image and video item, in order."""
    for message_index, message in enumerate(messages):
        if isinstance(message["content"], str):
            continue
        for item_index, item in enumerate(message["content"]):
            if item["type"] in ("image", "video"):
                yield f"messages[{message_index}].content[{item_index}].{item['type']}", item


def _check_media_counts(messages: list[dict]) -> None:
    kinds = [item["type"] for _, item in _media_items(messages)]
    for kind, limit in (("image", settings.VLM_MAX_IMAGES_PER_REQUEST), ("video", settings.VLM_MAX_VIDEOS_PER_REQUEST)):
        if kinds.count(kind) > limit:
            metrics.MEDIA_REJECTED.labels(runtime.model_name, "too_many").inc()
            raise InvalidRequest(f"messages: at most {limit} {kind}s per request, got {kinds.count(kind)}")


def _load_media(messages: list[dict], record: RequestRecord) -> list[dict]:
    """The conversation in qwen-vl-utils' form, every media item replaced by loaded pixels."""
    policy = media_policy()
    loaded: dict[int, dict] = {}
    for location, item in _media_items(messages):
        try:
            loaded[id(item)] = _load_one(item, policy, record)
        except MediaError as error:
            metrics.MEDIA_REJECTED.labels(runtime.model_name, error.media_reason).inc()
            raise MediaError(f"{location}: {error.detail}", media_reason=error.media_reason) from error
    conversation = []
    for message in messages:
        content = message["content"]
        if not isinstance(content, str):
            content = [loaded.get(id(item)) or {"type": "text", "text": item["text"]} for item in content]
        conversation.append({"role": message["role"], "content": content})
    return conversation


def _load_one(item: dict, policy: media.MediaPolicy, record: RequestRecord) -> dict:
    kind = item["type"]
    if kind == "image":
        image = media.load_image(
            item["image"], policy, max_pixels=item.get("max_pixels"), min_pixels=item.get("min_pixels")
        )
        pixels, seconds = image.image, image.fetch_seconds
        entry = {"type": "image", "image": image.image}
        summary = {"sha256": image.sha256, "source": image.source_kind, "size": list(image.original_size)}
    else:
        video = media.load_video(
            item["video"], policy, fps=item.get("fps"), nframes=item.get("nframes"), max_pixels=item.get("max_pixels")
        )
        pixels, seconds = video.frames[0], video.fetch_seconds
        # Frames are already sized by the media loader; the exact size keeps qwen-vl-utils from
        # applying its own per-frame floor again.
        entry = {
            "type": "video",
            "video": video.frames,
            "sample_fps": video.sample_fps,
            "resized_height": pixels.height,
            "resized_width": pixels.width,
        }
        summary = {
            "sha256": video.sha256,
            "source": video.source_kind,
            "size": list(video.original_size),
            "frames": len(video.frames),
            "duration_s": round(video.duration_s, 3),
        }
    width, height = summary["size"]
    metrics.MEDIA_FETCH_TIME.labels(runtime.model_name, kind).observe(seconds)
    if kind == "image":
        metrics.REQUEST_IMAGE_PIXELS.labels(runtime.model_name).observe(width * height)
    record.media.append({"kind": kind, **summary, "resized": [pixels.width, pixels.height]})
    return entry


# --- VRAM ----------------------------------------------------------------------------------------


def vram_status() -> MemoryStats:
    """Memory of the model's device; before the model is loaded, of the device it will use."""
    if runtime.backend is not None:
        stats = runtime.backend.memory()
    else:
        try:
            device = resolve_device(settings.VLM_DEVICE)
        except RuntimeError:
            device = "cpu"
        stats = memory_stats(device)
    metrics.observe_memory(runtime.model_name, stats)
    return stats


def vram_clear(*, trigger: str = "manual") -> dict:
    """gc.collect() and torch.cuda.empty_cache() on the engine's worker, between two batches."""
    engine = runtime.engine_or_raise()
    before = runtime.backend.memory()
    engine.run_between_batches(runtime.backend.clear_cache, timeout=settings.VLM_REQUEST_TIMEOUT_S)
    after = runtime.backend.memory()
    metrics.VRAM_CLEARS.labels(runtime.model_name, trigger).inc()
    metrics.observe_memory(runtime.model_name, after)
    return {
        "status": "cleared",
        "before": before.as_dict(),
        "after": after.as_dict(),
        "freed_gb": round(before.reserved_gb - after.reserved_gb, 3),
    }


# --- the request log -----------------------------------------------------------------------------


def request_finish(*, record: RequestRecord) -> None:
    """Count the request in the metrics and have its row written. Never raises: losing a log row must not
    fail the response, but it is logged loudly.

    With VLM_REQUEST_LOG_WRITER=thread (the default) the row goes to the process's log writer
    (inference/log_writer.py), which inserts queued rows in batches, off the request thread; `inline` writes
    it here (the Django test client's tests read it back at once)."""
    record.finished_at = timezone.now()
    record.finished_monotonic = time.monotonic()
    try:
        _observe_request(record)
    except Exception:
        logger.exception("metrics for request %s failed", record.request_id)
    if settings.VLM_REQUEST_LOG_WRITER == "thread":
        request_log_writer.submit(record)
    else:
        write_request_log(records=[record])


def write_request_log_batch(records: list[RequestRecord]) -> None:
    """The log writer's batch, on its own thread. As around a request, a connection that died (a restarted
    database) or outlived DATABASE_CONN_MAX_AGE is closed before and after. Once a minute the dashboard's newly
    finished buckets are worked out too, so the dashboard never has to read days of rows."""
    global _next_dashboard_settle
    close_old_connections()
    try:
        write_request_log(records=records)
        if time.monotonic() >= _next_dashboard_settle:
            _next_dashboard_settle = time.monotonic() + DASHBOARD_SETTLE_EVERY_S
            try:
                selectors.dashboard_buckets_settle()
            except Exception:
                logger.exception("working out the dashboard's finished buckets failed")
    finally:
        close_old_connections()  # with DATABASE_CONN_MAX_AGE=0, an idle writer holds no connection


DASHBOARD_SETTLE_EVERY_S = 60.0
_next_dashboard_settle = 0.0  # time.monotonic(); only the log writer's thread reads and sets it


request_log_writer: BatchWriter[RequestRecord] = BatchWriter(write_request_log_batch, name="vlm-request-log")
flush_at_exit(request_log_writer)


def _storable(text: str) -> str:
    """Client text as a database keeps it: PostgreSQL refuses NUL in text, which would lose the row."""
    return text.replace("\x00", "\ufffd")


def write_request_log(*, records: list[RequestRecord]) -> None:
    """Insert the records' rows in one transaction. If that fails, row by row, so one bad row (a reused
    request id) costs no other; a row that still fails is logged with its request id."""
    rows = [request_log_row(record) for record in records]
    _write_rows(rows)
    _forget_dashboard_buckets_of_late_rows(rows)


def _write_rows(rows: list[RequestLog]) -> None:
    if len(rows) > 1:
        try:
            with transaction.atomic():
                RequestLog.objects.bulk_create(rows)
            return
        except Exception:
            logger.warning("a batch of %d request-log rows failed; writing them one by one", len(rows), exc_info=True)
    for row in rows:
        try:
            _insert_row(row)
        except Exception:
            logger.exception("could not write the request log row for %s", row.id)


def _forget_dashboard_buckets_of_late_rows(rows: list[RequestLog]) -> None:
    """A row written after its dashboard buckets may have been worked out (a request that outlived its deadline
    by minutes) drops them, so they are worked out again with it."""
    settled_before = timezone.now() - selectors.dashboard_settle_delay()
    late = [row.received_at for row in rows if row.received_at < settled_before]
    if late:
        try:
            selectors.dashboard_buckets_forget(start=min(late), end=max(late) + timedelta(microseconds=1))
        except Exception:
            logger.exception("could not drop the dashboard buckets of %d late request-log rows", len(late))


def _insert_row(row: RequestLog) -> None:
    try:
        with transaction.atomic():
            row.save(force_insert=True)
    except IntegrityError:
        # A client reused an X-Request-ID that is already on record: keep the request, under a new id.
        logger.warning("request id %s is already on record; logging this request as a new id", row.id)
        row.id = uuid.uuid4()
        row.save(force_insert=True)


def request_log_row(record: RequestRecord) -> RequestLog:
    """The request-log row (unsaved) for one finished request."""
    result = record.result
    finished_at = record.finished_at or timezone.now()
    finished_monotonic = record.finished_monotonic or time.monotonic()
    row = RequestLog(
        id=record.request_id,
        received_at=record.received_at,
        finished_at=finished_at,
        endpoint=_storable(record.endpoint),
        method=record.method,
        status_code=record.status_code,
        client_ip=record.client_ip,
        api_key=record.api_key,
        model=runtime.model_name if record.endpoint.endswith(GENERATION_ENDPOINTS) else "",
        max_new_tokens=record.max_new_tokens,
        temperature=record.temperature,
        top_p=record.top_p,
        num_messages=record.num_messages,
        prompt_preview=_storable(record.prompt_preview),
        num_images=record.num_images,
        num_videos=record.num_videos,
        media=record.media,
        error_reason=record.error_reason,
        error_detail=_storable(record.error_detail[:4000]),
    )
    if result is not None:
        timings = result.timings
        row.visual_tokens = result.visual_tokens
        row.input_tokens = result.input_tokens
        row.output_tokens = result.output_tokens
        row.total_tokens = result.input_tokens + result.output_tokens
        row.queue_ms = timings.queue_s * 1000
        row.preprocess_ms = timings.preprocess_s * 1000
        row.ttft_ms = timings.ttft_s * 1000
        row.decode_ms = timings.decode_s * 1000
        row.total_ms = timings.total_s * 1000
        row.output_tokens_per_s = result.output_tokens / timings.decode_s if timings.decode_s > 0 else None
        row.batch_size = result.batch_size
        row.finish_reason = result.finish_reason
    else:
        row.total_ms = (finished_monotonic - record.received_monotonic) * 1000
    return row


def _observe_request(record: RequestRecord) -> None:
    model = runtime.model_name
    metrics.REQUESTS.labels(metrics.endpoint_label(record.endpoint), str(record.status_code)).inc()
    if record.error_reason:
        metrics.REQUEST_FAILURE.labels(model, record.error_reason).inc()
    result = record.result
    if result is None or record.status_code >= 400:
        return
    timings = result.timings
    metrics.REQUEST_SUCCESS.labels(model, result.finish_reason).inc()
    metrics.PROMPT_TOKENS.labels(model).inc(result.input_tokens)
    metrics.GENERATION_TOKENS.labels(model).inc(result.output_tokens)
    metrics.E2E_LATENCY.labels(model).observe(timings.total_s)
    metrics.TIME_TO_FIRST_TOKEN.labels(model).observe(timings.ttft_s)
    metrics.QUEUE_TIME.labels(model).observe(timings.queue_s)
    metrics.PREFILL_TIME.labels(model).observe(timings.prefill_s)
    metrics.DECODE_TIME.labels(model).observe(timings.decode_s)
    if result.output_tokens > 1:
        metrics.TIME_PER_OUTPUT_TOKEN.labels(model).observe(timings.decode_s / (result.output_tokens - 1))
    metrics.REQUEST_PROMPT_TOKENS.labels(model).observe(result.input_tokens)
    metrics.REQUEST_GENERATION_TOKENS.labels(model).observe(result.output_tokens)
    metrics.REQUEST_VISUAL_TOKENS.labels(model).observe(result.visual_tokens)
