"""The process-wide model: its loading state, its backend and the engine that owns it.

Loaded once per process, in a background thread started from `InferenceConfig.ready()`, so
`/health` answers at once while the weights load. Tests call `runtime.load()` through a fixture.
"""

from __future__ import annotations

import logging
import re
import threading

from django.conf import settings

from monitoring import metrics

from .backend import QwenVLBackend
from .engine import Engine
from .errors import ModelNotReady

logger = logging.getLogger(__name__)


class ModelRuntime:
    """State machine: idle -> loading -> healthy | error."""

    def __init__(self) -> None:
        self.state = "idle"
        self.error = ""
        self.backend: QwenVLBackend | None = None
        self.engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        """The name clients and dashboards see (/health, /v1/models, the `model_name` label, the request log):
        VLM_SERVED_MODEL_NAME, as vLLM's --served-model-name, else VLM_MODEL itself."""
        return settings.VLM_SERVED_MODEL_NAME or settings.VLM_MODEL

    @property
    def device(self) -> str:
        return self.backend.device if self.backend and self.state == "healthy" else settings.VLM_DEVICE

    def start_loading(self) -> None:
        """Start loading in a daemon thread; a second call while loading or loaded does nothing."""
        with self._lock:
            if self.state in ("loading", "healthy"):
                return
            self.state = "loading"
        threading.Thread(target=self._load, name="vlm-model-loader", daemon=True).start()

    def load(self) -> None:
        """Load in the calling thread (tests, benchmarks)."""
        with self._lock:
            if self.state == "healthy":
                return
            self.state = "loading"
        self._load()

    def _load(self) -> None:
        metrics.MODEL_LOADED.labels(model_name=self.model_name).set(0)
        try:
            backend = QwenVLBackend(settings.VLM_MODEL, device=settings.VLM_DEVICE)
            backend.load()
            engine = Engine(
                backend,
                max_batch_size=settings.VLM_MAX_BATCH_SIZE,
                batch_wait_s=settings.VLM_BATCH_WAIT_MS / 1000.0,
                max_queue=settings.VLM_MAX_QUEUE,
                vram_threshold=settings.VLM_VRAM_THRESHOLD,
                observer=metrics.EngineMetrics(self.model_name),
            )
            engine.start()
        except Exception as error:  # reported by /health and the log; the process keeps answering
            logger.exception("loading the model %s failed", settings.VLM_MODEL)
            self.error = _explain_load_failure(error)
            self.state = "error"
            return
        self.backend, self.engine = backend, engine
        self.error = ""
        self.state = "healthy"
        metrics.observe_model_loaded(self.model_name, engine)

    def status(self) -> tuple[str, str]:
        """The state and error that /health reports: a loaded model whose engine thread has stopped cannot
        serve, so it is an error too (requests would otherwise wait for their deadline)."""
        if self.state == "healthy" and self.engine is not None and not self.engine.is_alive:
            return "error", "The engine's worker thread stopped; restart the server (the server log says why)."
        return self.state, self.error

    def engine_or_raise(self) -> Engine:
        state, _ = self.status()
        if state != "healthy" or self.engine is None:
            detail = f"Model is not loaded (state: {state})."
            raise ModelNotReady(detail)
        return self.engine

    def unload(self) -> None:
        """Stop the engine and forget the model (tests)."""
        if self.engine:
            self.engine.stop()
        self.backend = self.engine = None
        self.state, self.error = "idle", ""


# An absolute path in an error message (not the path part of a URL): /health is open to anyone, and must
# not show how the server's disk is laid out. The server log keeps the whole message.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.])/[^\s'\"`,;()\[\]]+")


def _explain_load_failure(error: Exception) -> str:
    text = _ABSOLUTE_PATH.sub("<path>", f"{type(error).__name__}: {error}")
    if isinstance(error, OSError) and "/" in settings.VLM_MODEL and not settings.VLM_MODEL.startswith("/"):
        text += (
            " (not in the local Hugging Face cache and the hub unreachable? "
            "Set VLM_MODEL to a local folder, or run `make demo` for the tiny model.)"
        )
    return text[:1000]


runtime = ModelRuntime()
