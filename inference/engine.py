"""The engine: one per process, it owns the model. A bounded queue, one worker thread, continuous batching.

Request threads validate, load media and run the processor (backend.prepare) in parallel, then
`submit` a Job. When idle, the worker collects a batch (up to `max_batch_size` jobs; after the first
arrives it waits at most `batch_wait_s` for more) and prefills it; while rows decode, jobs that
arrive join the batch at the next step (after their own prefill) as long as there is room, so a new
request never waits for a whole batch to finish. Every row keeps its own sampling and stopping, and
completes the moment it ends (EOS, its own max_new_tokens, a stop asked by its callback, or
cancellation). Maintenance (cache clearing) runs on the worker between two model steps.

Django-free: the services layer adapts it to the web app, and observers (metrics) subscribe to it.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .backend import DecodeBatch, MemoryStats, PreparedRow, is_out_of_memory, keep_rows, merge_batches
from .errors import ClientDisconnected, OutOfMemory, Overloaded, RequestTimeout, VLMError
from .sampling import RowSampling, select_next_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timings:
    """Seconds, measured by the engine. ttft and total count from when the request was received."""

    queue_s: float
    preprocess_s: float
    prefill_s: float
    ttft_s: float
    decode_s: float
    total_s: float


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]
    input_tokens: int
    output_tokens: int
    visual_tokens: int
    finish_reason: str  # "stop" (EOS) or "length" (max_new_tokens)
    timings: Timings
    batch_size: int


@dataclass(eq=False)
class Job:
    """One request's generation. Created by the request thread, completed by the worker."""

    row: PreparedRow
    sampling: RowSampling
    max_new_tokens: int
    received_at: float  # time.monotonic() when the HTTP request arrived
    preprocess_s: float
    deadline: float  # time.monotonic() past which the request has failed
    # Called on the worker thread with each generated token (EOS excluded), in order. Returning True
    # ends the row at once, successfully (finish_reason "stop"): how OpenAI `stop` strings end a row
    # on the very token that completed them. It must be cheap: the whole batch waits for it.
    on_token: Callable[[int], bool | None] | None = None
    # Sampling seed: the engine gives the row its own generator on the model's device, so the same
    # request with the same seed draws the same tokens whatever else shares its batch.
    seed: int | None = None
    request_id: str = ""
    token_ids: list[int] = field(default_factory=list)
    enqueued_at: float = 0.0
    started_at: float = 0.0
    first_token_at: float = 0.0
    batch_size: int = 0
    finished: bool = False
    future: Future = field(default_factory=Future)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        """The client went away: drop it from the queue, or stop its row at the next token."""
        self.cancelled.set()

    def result(self, *, client_gone: Callable[[], bool] | None = None, poll_s: float = 0.25) -> GenerationResult:
        """Wait for the result until the deadline; raises the job's VLMError, or RequestTimeout.

        `client_gone`, checked every `poll_s`, lets the caller cancel the job when its client has
        disconnected: the job leaves the queue, or its row stops at the next token.
        """
        while True:
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                self.cancel()
                raise RequestTimeout()
            try:
                return self.future.result(timeout=min(remaining, poll_s) if client_gone else remaining)
            except TimeoutError:
                if client_gone is not None and client_gone():
                    self.cancel()
                    raise ClientDisconnected() from None


class EngineObserver:
    """Hooks for metrics; every method is optional and must be cheap (the worker calls them)."""

    def queue_changed(self, waiting: int, running: int) -> None: ...

    def rows_joined(self, batch_size: int) -> None:
        """New rows joined the batch; `batch_size` counts the rows decoding together now."""

    def out_of_memory(self) -> None: ...

    def cache_cleared(self, trigger: str) -> None: ...

    def memory_measured(self, stats: MemoryStats) -> None: ...


def collect_batch(jobs: queue.Queue, *, max_size: int, wait_s: float, poll_s: float = 0.1) -> list:
    """Block up to `poll_s` for a first item, then gather more until `max_size` or `wait_s` passes.

    A pure function over a queue (unit-tested with a plain queue.Queue). `None` items are wake-ups
    (maintenance is pending): they end the collection early and are not returned.
    """
    try:
        first = jobs.get(timeout=poll_s)
    except queue.Empty:
        return []
    if first is None:
        return []
    batch = [first]
    closes_at = time.monotonic() + wait_s
    while len(batch) < max_size:
        remaining = closes_at - time.monotonic()
        try:
            item = jobs.get(timeout=remaining) if remaining > 0 else jobs.get_nowait()
        except queue.Empty:
            break
        if item is None:
            break
        batch.append(item)
    return batch


def take_waiting(jobs: queue.Queue, *, max_size: int) -> list:
    """Whatever waits in the queue now, up to `max_size`, without blocking (wake-ups skipped)."""
    taken: list = []
    while len(taken) < max_size:
        try:
            item = jobs.get_nowait()
        except queue.Empty:
            break
        if item is not None:
            taken.append(item)
    return taken


class Engine:
    """Owns the backend; the only thread that touches the model is this engine's worker."""

    def __init__(
        self,
        backend,
        *,
        max_batch_size: int = 16,
        batch_wait_s: float = 0.01,
        max_queue: int = 64,
        vram_threshold: float = 0.85,
        observer: EngineObserver | None = None,
    ) -> None:
        self.backend = backend
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_s
        self.max_queue = max_queue
        self.vram_threshold = vram_threshold
        self.observer = observer or EngineObserver()
        self._jobs: queue.Queue = queue.Queue()
        self._maintenance: queue.Queue = queue.Queue()
        self._waiting = 0
        self._running = 0
        self._counts_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    # --- request threads -------------------------------------------------------------------------

    @property
    def num_waiting(self) -> int:
        return self._waiting

    @property
    def num_running(self) -> int:
        return self._running

    def check_capacity(self) -> None:
        """Raise Overloaded when the queue is full: called before any media is fetched or decoded."""
        if self._waiting >= self.max_queue:
            raise Overloaded(retry_after=1)

    def submit(self, job: Job) -> Job:
        """Queue a prepared job; raises Overloaded when `max_queue` jobs already wait."""
        if job.seed is not None:
            job.sampling = dataclasses.replace(job.sampling, generator=self._seeded_generator(job.seed))
        with self._counts_lock:
            if self._waiting >= self.max_queue:
                raise Overloaded(retry_after=1)
            self._waiting += 1
        job.enqueued_at = time.monotonic()
        self._jobs.put(job)
        self._publish_counts()
        return job

    def _seeded_generator(self, seed: int) -> torch.Generator:
        # The sampler draws on the logits' device: on CUDA the generator must be a CUDA generator.
        return torch.Generator(device=self.backend.device).manual_seed(seed)

    def run_between_batches(self, task: Callable[[], object], *, timeout: float | None = None) -> object:
        """Run `task` on the worker thread between two model steps (never during a forward pass)."""
        future: Future = Future()
        self._maintenance.put((task, future))
        self._jobs.put(None)  # wake the worker if it is idle
        return future.result(timeout=timeout)

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        self._worker = threading.Thread(target=self._work, name="vlm-engine", daemon=True)
        self._worker.start()

    @property
    def is_alive(self) -> bool:
        """Whether the worker thread runs (it outlives any error in a batch; only a stop or a crash of the
        thread itself, say a MemoryError outside a batch, ends it)."""
        return self._worker is not None and self._worker.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._worker:
            self._worker.join(timeout=10)

    # --- worker ----------------------------------------------------------------------------------

    def _publish_counts(self) -> None:
        self.observer.queue_changed(self._waiting, self._running)

    def _work(self) -> None:
        running: list[Job] = []
        state: DecodeBatch | None = None
        while not self._stop.is_set():
            joining: list[Job] = []
            try:
                # Inference mode for the sampler too: it works in place on the model's logits.
                with torch.inference_mode():
                    self._run_maintenance()
                    joining = self._take_new_jobs(busy=len(running))
                    if joining:
                        state, running = self._join(state, running, joining)
                    if running:
                        state, running = self._step(state, running)
            except Exception:  # the worker must outlive any bug: fail what it holds, keep serving
                logger.exception("the engine failed %d requests", len(running) + len(joining))
                self._fail(running + joining, VLMError())
                state, running = None, []
            self._running = len(running)
            self._publish_counts()

    def _take_new_jobs(self, *, busy: int) -> list[Job]:
        """Jobs to start now: with rows decoding, whatever already waits (no waiting: they join at the
        next step); when idle, a batch collected as `collect_batch` does."""
        free = self.max_batch_size - busy
        if free <= 0:
            return []
        if busy:
            jobs = take_waiting(self._jobs, max_size=free)
        else:
            jobs = collect_batch(self._jobs, max_size=free, wait_s=self.batch_wait_s)
        if jobs:
            with self._counts_lock:
                self._waiting -= len(jobs)
        return [job for job in jobs if self._still_wanted(job)]

    def _still_wanted(self, job: Job) -> bool:
        """Jobs whose client left, or whose deadline passed while queued, never reach the model."""
        if job.cancelled.is_set():
            job.future.set_exception(ClientDisconnected())
            return False
        if time.monotonic() >= job.deadline:
            job.future.set_exception(RequestTimeout())
            return False
        return True

    def _run_maintenance(self) -> None:
        while True:
            try:
                task, future = self._maintenance.get_nowait()
            except queue.Empty:
                return
            try:
                future.set_result(task())
            except Exception as error:  # reported to the caller, the worker keeps serving
                future.set_exception(error)

    def _join(
        self, state: DecodeBatch | None, running: list[Job], joining: list[Job]
    ) -> tuple[DecodeBatch | None, list[Job]]:
        """Prefill the new jobs (their first token comes out of it) and add them to the running rows."""
        self._running = len(running) + len(joining)
        self._publish_counts()
        joined = self._prefill(joining)
        if joined is None:
            return state, running
        joined_state, joined_jobs = joined
        running = running + joined_jobs
        for job in running:
            job.batch_size = max(job.batch_size, len(running))
        self.observer.rows_joined(len(running))
        return self._without_finished(merge_batches(state, joined_state), running)

    def _prefill(self, jobs: list[Job]) -> tuple[DecodeBatch, list[Job]] | None:
        """Prompt pass for `jobs`; on out-of-memory, clear the cache and retry in halves."""
        started = time.monotonic()
        for job in jobs:
            job.started_at = started
            job.token_ids.clear()
        try:
            state, logits = self.backend.prefill([job.row for job in jobs])
        except Exception as error:
            if is_out_of_memory(error):
                return self._prefill_in_halves(jobs)
            logger.exception("prefill failed for %d requests", len(jobs))
            self._fail(jobs, VLMError())
            return None
        state.last_tokens = select_next_tokens(logits, [job.sampling for job in jobs])
        self._on_step(jobs, state.last_tokens.tolist())
        return state, jobs

    def _prefill_in_halves(self, jobs: list[Job]) -> tuple[DecodeBatch, list[Job]] | None:
        self._out_of_memory()
        if len(jobs) == 1:
            self._fail(jobs, OutOfMemory())
            return None
        logger.warning("out of memory in the prefill of %d requests; retrying in halves", len(jobs))
        half = len(jobs) // 2
        parts = [part for part in (self._prefill(jobs[:half]), self._prefill(jobs[half:])) if part is not None]
        if not parts:
            return None
        state = None
        for part_state, _ in parts:
            state = merge_batches(state, part_state)
        return state, [job for _, part_jobs in parts for job in part_jobs]

    def _step(self, state: DecodeBatch, running: list[Job]) -> tuple[DecodeBatch | None, list[Job]]:
        """One decode step for every running row; rows that end leave the batch at once."""
        try:
            logits = self.backend.decode_step(state)
        except Exception as error:
            return self._restart_after_step_failure(running, error)
        state.last_tokens = select_next_tokens(logits, [job.sampling for job in running])
        self._on_step(running, state.last_tokens.tolist())
        before = len(running)
        state, running = self._without_finished(state, running)
        if len(running) < before:  # rows left: a moment to give memory back
            self._clear_cache_if_above_threshold()
        return state, running

    def _restart_after_step_failure(self, running: list[Job], error: Exception) -> tuple[None, list[Job]]:
        """A failed step leaves the cache unusable. After out-of-memory, rows whose client has seen no
        token start again (in smaller prefills); rows that already streamed fail, as on any other error."""
        if not is_out_of_memory(error):
            logger.exception("a decode step failed for %d requests", len(running))
            self._fail(running, VLMError())
            return None, []
        self._out_of_memory()
        retry = [job for job in running if not job.finished and not (job.on_token and job.token_ids)]
        self._fail([job for job in running if job not in retry], OutOfMemory())
        if len(retry) == 1 and len(running) == 1:
            self._fail(retry, OutOfMemory())
            return None, []
        logger.warning("out of memory in a decode step of %d rows; restarting %d", len(running), len(retry))
        joined = self._prefill_in_halves(retry) if len(retry) > 1 else self._prefill(retry)
        if joined is None:
            return None, []
        return self._without_finished(*joined)

    def _out_of_memory(self) -> None:
        self.observer.out_of_memory()
        self.backend.clear_cache()
        self.observer.cache_cleared("oom")

    def _without_finished(self, state: DecodeBatch, running: list[Job]) -> tuple[DecodeBatch | None, list[Job]]:
        keep = [index for index, job in enumerate(running) if not job.finished]
        if len(keep) == len(running):
            return state, running
        return keep_rows(state, keep), [running[index] for index in keep]

    def _fail(self, jobs: Sequence[Job], error: VLMError) -> None:
        for job in jobs:
            if not job.finished:
                job.finished = True
                job.future.set_exception(error)

    def _on_step(self, jobs: list[Job], tokens: list[int]) -> None:
        now = time.monotonic()
        eos = self.backend.eos_token_ids
        for job, token in zip(jobs, tokens, strict=True):
            if job.finished:
                continue
            if job.cancelled.is_set():
                self._fail([job], ClientDisconnected())
                continue
            if not job.token_ids:
                job.first_token_at = now
            if token in eos:
                self._finish(job, "stop")
                continue
            job.token_ids.append(token)
            if job.on_token and self._stop_requested_by_callback(job, token):
                continue
            if len(job.token_ids) >= job.max_new_tokens:
                self._finish(job, "length")

    def _stop_requested_by_callback(self, job: Job, token: int) -> bool:
        """Hand `token` to the job's callback; True when the row has ended (the callback asked to stop,
        or failed: a broken callback fails its own row, never the rest of the batch)."""
        try:
            stop_now = job.on_token(token)
        except Exception:
            logger.exception("the token callback of request %s failed", job.request_id)
            self._fail([job], VLMError())
            return True
        if stop_now:
            self._finish(job, "stop")
        return bool(stop_now)

    def _finish(self, job: Job, reason: str) -> None:
        """Complete one row now, while the rest of its batch goes on."""
        job.finished = True
        now = time.monotonic()
        first = job.first_token_at or now
        timings = Timings(
            queue_s=job.started_at - job.enqueued_at,
            preprocess_s=job.preprocess_s,
            prefill_s=first - job.started_at,
            ttft_s=first - job.received_at,
            decode_s=now - first,
            total_s=now - job.received_at,
        )
        job.future.set_result(
            GenerationResult(
                text=self.backend.decode(job.token_ids),
                token_ids=list(job.token_ids),
                input_tokens=job.row.input_tokens,
                output_tokens=len(job.token_ids),
                visual_tokens=job.row.visual_tokens,
                finish_reason=reason,
                timings=timings,
                batch_size=job.batch_size,
            )
        )

    def _clear_cache_if_above_threshold(self) -> None:
        if self.backend.memory().usage_fraction > self.vram_threshold:
            self.backend.clear_cache()
            self.observer.cache_cleared("auto")
        self.observer.memory_measured(self.backend.memory())
