"""Every Prometheus metric of the server, in one module. Named after vLLM's where the meaning is the same.

The objects live in prometheus_client's default registry, which django-prometheus's `/metrics`
view exports (together with its own HTTP and database metrics). Gauges declare how they combine
across gunicorn workers in prometheus_client's multiprocess mode.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from inference.engine import EngineObserver

# Seconds from 1 ms to 10 min: latencies of a VLM server span both ends.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
    10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
# Tokens up to a 32k-token context (Qwen2.5-VL-7B's max_position_embeddings is 128k; rare beyond 32k).
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
PIXEL_BUCKETS = (1e3, 1e4, 5e4, 1e5, 2.5e5, 5e5, 1e6, 2e6, 4e6, 8e6, 1.6e7, 6.4e7)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128)

MODEL = ("model_name",)

REQUESTS = Counter("vlm_requests", "API requests by endpoint and HTTP status.", ("endpoint", "status"))
MODEL_LOADED = Gauge("vlm_model_loaded", "1 when the model is loaded and serving.", MODEL, multiprocess_mode="max")
NUM_REQUESTS_RUNNING = Gauge(
    "vlm_num_requests_running", "Requests in the batch on the model.", MODEL, multiprocess_mode="livesum"
)
NUM_REQUESTS_WAITING = Gauge(
    "vlm_num_requests_waiting", "Requests queued for the model.", MODEL, multiprocess_mode="livesum"
)
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
BATCH_SIZE = Histogram("vlm_batch_size", "Rows per batched generation.", MODEL, buckets=BATCH_BUCKETS)
VRAM_ALLOCATED = Gauge("vlm_vram_allocated_bytes", "Device memory allocated.", MODEL, multiprocess_mode="liveall")
VRAM_RESERVED = Gauge("vlm_vram_reserved_bytes", "Device memory reserved.", MODEL, multiprocess_mode="liveall")
VRAM_TOTAL = Gauge("vlm_vram_total_bytes", "Device memory in total.", MODEL, multiprocess_mode="liveall")
VRAM_CLEARS = Counter("vlm_vram_clears", "Cache clears by trigger (auto, manual, oom).", (*MODEL, "trigger"))
OOM = Counter("vlm_oom", "Out-of-memory errors in generation.", MODEL)


class EngineMetrics(EngineObserver):
    """Feeds the engine's events into the metrics above."""

    def __init__(self, model_name: str) -> None:
        self.model_name = model_name

    def queue_changed(self, waiting: int, running: int) -> None:
        NUM_REQUESTS_WAITING.labels(self.model_name).set(waiting)
        NUM_REQUESTS_RUNNING.labels(self.model_name).set(running)

    def batch_finished(self, size: int, seconds: float) -> None:
        BATCH_SIZE.labels(self.model_name).observe(size)

    def out_of_memory(self) -> None:
        OOM.labels(self.model_name).inc()

    def cache_cleared(self, trigger: str) -> None:
        VRAM_CLEARS.labels(self.model_name, trigger).inc()


def observe_memory(model_name: str, stats) -> None:
    """Set the VRAM gauges from a backend MemoryStats (host memory on a CPU)."""
    gib = 1024**3
    VRAM_ALLOCATED.labels(model_name).set(stats.allocated_gb * gib)
    VRAM_RESERVED.labels(model_name).set(stats.reserved_gb * gib)
    VRAM_TOTAL.labels(model_name).set(stats.total_gb * gib)
