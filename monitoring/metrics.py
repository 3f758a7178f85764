"""Every Prometheus metric of the server, in one module. Named after vLLM's where the meaning is the same.

One process: the objects live in prometheus_client's default registry. Under gunicorn (see
gunicorn.conf.py) prometheus_client runs in multiprocess mode: each worker writes its values to files
in PROMETHEUS_MULTIPROC_DIR and `scrape_registry()` merges them, so counters and histograms add up
over the workers, and each gauge says how its workers' values combine (`multiprocess_mode`; the
`live*` modes forget a worker once gunicorn marks it dead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.urls import Resolver404, resolve
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.multiprocess import MultiProcessCollector

from inference.engine import EngineObserver

if TYPE_CHECKING:
    from inference.backend import MemoryStats
    from inference.engine import Engine

# `*_created` series double the exposition for a timestamp nobody queries, and multiprocess mode
# cannot export them anyway: without them one process and many export the same series.
disable_created_metrics()

# Seconds from 1 ms to 10 min: latencies of a VLM server span both ends.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Tokens up to Qwen2.5-VL-7B's 128k context (max_position_embeddings); most requests stay under 32k.
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
# From a thumbnail to qwen-vl-utils' 12.8 MP default limit and beyond (what clients send, before resizing).
PIXEL_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6, 1.6e7, 6.4e7)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)

MODEL = ("model_name",)

# Label values whose series start at zero once the model serves. A labelled series is otherwise absent
# until first used, and Prometheus's rate() never counts a series' first value: the first failure of a
# kind would go unseen, and the "no traffic" alert would have nothing to look at.
FINISHED_REASONS = ("stop", "length")
FAILURE_REASONS = (
    "validation", "media", "overloaded", "timeout", "oom", "internal", "unauthorized", "throttled",
    "not_loaded", "cancelled", "too_large", "not_found", "model_not_found",
)  # fmt: skip
MEDIA_REJECT_REASONS = (
    "scheme", "address", "domain", "path", "too_large", "timeout", "fetch", "decode", "too_many", "dimensions",
)  # fmt: skip
MEDIA_KINDS = ("image", "video")
CLEAR_TRIGGERS = ("auto", "manual", "oom")

REQUESTS = Counter("vlm_requests", "API requests by endpoint (route) and HTTP status.", ("endpoint", "status"))
MODEL_LOADED = Gauge(
    "vlm_model_loaded", "1 when every live worker has the model loaded and serving.", MODEL,
    multiprocess_mode="livemin",
)  # fmt: skip
NUM_REQUESTS_RUNNING = Gauge(
    "vlm_num_requests_running", "Requests in the batch on the model.", MODEL, multiprocess_mode="livesum"
)
NUM_REQUESTS_WAITING = Gauge(
    "vlm_num_requests_waiting", "Requests queued for the model.", MODEL, multiprocess_mode="livesum"
)
QUEUE_CAPACITY = Gauge(
    "vlm_queue_capacity", "Requests that may wait in the queue (VLM_MAX_QUEUE per worker).", MODEL,
    multiprocess_mode="livesum",
)  # fmt: skip
PROMPT_TOKENS = Counter("vlm_prompt_tokens", "Prompt tokens processed.", MODEL)
GENERATION_TOKENS = Counter("vlm_generation_tokens", "Tokens generated.", MODEL)
REQUEST_SUCCESS = Counter("vlm_request_success", "Successful generations.", (*MODEL, "finished_reason"))
REQUEST_FAILURE = Counter("vlm_request_failure", "Failed API requests by reason.", (*MODEL, "reason"))
E2E_LATENCY = Histogram(
    "vlm_e2e_request_latency_seconds", "Request received to response ready.", MODEL, buckets=LATENCY_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "vlm_time_to_first_token_seconds", "Request received to first token.", MODEL, buckets=LATENCY_BUCKETS
)
QUEUE_TIME = Histogram("vlm_request_queue_time_seconds", "Time in the queue.", MODEL, buckets=LATENCY_BUCKETS)
PREFILL_TIME = Histogram(
    "vlm_request_prefill_time_seconds", "Batch start to first token.", MODEL, buckets=LATENCY_BUCKETS
)
DECODE_TIME = Histogram("vlm_request_decode_time_seconds", "First token to last token.", MODEL, buckets=LATENCY_BUCKETS)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "vlm_time_per_output_token_seconds", "Decode time per token after the first.", MODEL, buckets=LATENCY_BUCKETS
)
PREPROCESS_TIME = Histogram(
    "vlm_preprocess_seconds", "Media loading and processor time in the request thread.", MODEL,
    buckets=LATENCY_BUCKETS,
)  # fmt: skip
REQUEST_PROMPT_TOKENS = Histogram(
    "vlm_request_prompt_tokens", "Prompt tokens per request.", MODEL, buckets=TOKEN_BUCKETS
)
REQUEST_GENERATION_TOKENS = Histogram(
    "vlm_request_generation_tokens", "Generated tokens per request.", MODEL, buckets=TOKEN_BUCKETS
)
REQUEST_VISUAL_TOKENS = Histogram(
    "vlm_request_visual_tokens", "Image and video tokens per request.", MODEL, buckets=TOKEN_BUCKETS
)
REQUEST_IMAGE_PIXELS = Histogram(
    "vlm_request_image_pixels", "Pixels of each image as sent, before resizing.", MODEL, buckets=PIXEL_BUCKETS
)
MEDIA_FETCH_TIME = Histogram(
    "vlm_media_fetch_seconds", "Time to fetch and decode one media item.", (*MODEL, "kind"), buckets=LATENCY_BUCKETS
)
MEDIA_REJECTED = Counter("vlm_media_rejected", "Media items refused, by reason.", (*MODEL, "reason"))
BATCH_SIZE = Histogram(
    "vlm_batch_size",
    "Rows decoding together, observed each time requests join the batch.",
    MODEL,
    buckets=BATCH_BUCKETS,
)
# Workers on one GPU each hold their own allocations on the same device: the server's use is their
# sum, the device's size is the same for all. On a CPU: the workers' resident memory, the host's total.
VRAM_ALLOCATED = Gauge(
    "vlm_vram_allocated_bytes", "Device memory allocated by tensors.", MODEL, multiprocess_mode="livesum"
)
VRAM_RESERVED = Gauge(
    "vlm_vram_reserved_bytes", "Device memory reserved by the caching allocator.", MODEL, multiprocess_mode="livesum"
)
VRAM_TOTAL = Gauge("vlm_vram_total_bytes", "Device memory in total.", MODEL, multiprocess_mode="livemax")
VRAM_THRESHOLD = Gauge(
    "vlm_vram_clear_threshold_ratio", "Reserved/total above which the cache is cleared after a batch.", MODEL,
    multiprocess_mode="livemax",
)  # fmt: skip
VRAM_CLEARS = Counter("vlm_vram_clears", "Cache clears by trigger (auto, manual, oom).", (*MODEL, "trigger"))
OOM = Counter("vlm_oom", "Out-of-memory errors in generation.", MODEL)

_PER_REQUEST_HISTOGRAMS = (
    E2E_LATENCY, TIME_TO_FIRST_TOKEN, QUEUE_TIME, PREFILL_TIME, DECODE_TIME, TIME_PER_OUTPUT_TOKEN, PREPROCESS_TIME,
    REQUEST_PROMPT_TOKENS, REQUEST_GENERATION_TOKENS, REQUEST_VISUAL_TOKENS, REQUEST_IMAGE_PIXELS, BATCH_SIZE,
)  # fmt: skip


class EngineMetrics(EngineObserver):
    """Feeds the engine's events into the metrics above."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def queue_changed(self, waiting: int, running: int) -> None:
        NUM_REQUESTS_WAITING.labels(self.model_name).set(waiting)
        NUM_REQUESTS_RUNNING.labels(self.model_name).set(running)

    def rows_joined(self, batch_size: int) -> None:
        BATCH_SIZE.labels(self.model_name).observe(batch_size)

    def out_of_memory(self) -> None:
        OOM.labels(self.model_name).inc()

    def cache_cleared(self, trigger: str) -> None:
        VRAM_CLEARS.labels(self.model_name, trigger).inc()

    def memory_measured(self, stats: MemoryStats) -> None:
        observe_memory(self.model_name, stats)


def observe_memory(model_name: str, stats: MemoryStats) -> None:
    """Set the VRAM gauges from a backend MemoryStats (host memory on a CPU)."""
    gib = 1024**3
    VRAM_ALLOCATED.labels(model_name).set(stats.allocated_gb * gib)
    VRAM_RESERVED.labels(model_name).set(stats.reserved_gb * gib)
    VRAM_TOTAL.labels(model_name).set(stats.total_gb * gib)


def observe_model_loaded(model_name: str, engine: Engine) -> None:
    """The model serves: publish the engine's limits and memory, and start its series at zero."""
    QUEUE_CAPACITY.labels(model_name).set(engine.max_queue)
    VRAM_THRESHOLD.labels(model_name).set(engine.vram_threshold)
    NUM_REQUESTS_WAITING.labels(model_name).set(engine.num_waiting)
    NUM_REQUESTS_RUNNING.labels(model_name).set(engine.num_running)
    observe_memory(model_name, engine.backend.memory())
    _start_series_at_zero(model_name)
    MODEL_LOADED.labels(model_name).set(1)


def _start_series_at_zero(model_name: str) -> None:
    for metric in (PROMPT_TOKENS, GENERATION_TOKENS, OOM, *_PER_REQUEST_HISTOGRAMS):
        metric.labels(model_name)
    for metric, values in (
        (REQUEST_SUCCESS, FINISHED_REASONS),
        (REQUEST_FAILURE, FAILURE_REASONS),
        (MEDIA_REJECTED, MEDIA_REJECT_REASONS),
        (MEDIA_FETCH_TIME, MEDIA_KINDS),
        (VRAM_CLEARS, CLEAR_TRIGGERS),
    ):
        for value in values:
            metric.labels(model_name, value)


def endpoint_label(path: str) -> str:
    """The route a path matched: clients probing random paths must not create a series each."""
    try:
        return "/" + resolve(path).route
    except Resolver404:
        return "unmatched"


def scrape_registry() -> CollectorRegistry:
    """What /metrics exports: this process's registry, or under gunicorn every worker's files merged."""
    if not settings.PROMETHEUS_MULTIPROC_DIR:
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=settings.PROMETHEUS_MULTIPROC_DIR)
    return registry
