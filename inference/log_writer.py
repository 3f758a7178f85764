"""Request-log rows written by one background thread per process, in batches.

The row is written after the response is sent, yet it still cost the client: gunicorn serves the next request
of a keep-alive connection only once the previous one's closers have run, and with many request threads
inserting at once SQLite takes their writes one at a time (p99 0.4 s per insert under 32 writers,
bench/request_log_bench.py). Request threads now hand their record to this writer and return; it inserts
whatever has queued in one transaction.

Nothing is dropped quietly: a batch that fails is retried row by row, a row that still fails is logged with its
request id, and `flush()` (gunicorn's worker_exit hook, and atexit) writes what is queued before the process
ends.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

logger = logging.getLogger(__name__)

Item = TypeVar("Item")


class BatchWriter(Generic[Item]):
    """Calls `write_batch` with up to `max_batch` submitted items at a time, on its own daemon thread."""

    def __init__(self, write_batch: Callable[[list[Item]], None], *, max_batch: int = 500, name: str) -> None:
        self._write_batch = write_batch
        self._max_batch = max_batch
        self._name = name
        self._items: queue.SimpleQueue[Item] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._submitted = 0
        self._written = 0
        self._thread: threading.Thread | None = None

    def submit(self, item: Item) -> None:
        with self._lock:
            self._submitted += 1
            if self._thread is None or not self._thread.is_alive():
                # Started on first use, so a process that never logs (manage.py commands) has no thread; and
                # started again in a forked child, which inherits the object but not the thread.
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
        self._items.put(item)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every item submitted so far is written (or failed and logged); False on timeout."""
        with self._settled:
            target = self._submitted
            return self._settled.wait_for(lambda: self._written >= target, timeout=timeout)

    @property
    def pending(self) -> int:
        with self._lock:
            return self._submitted - self._written

    def _run(self) -> None:
        while True:
            batch = [self._items.get()]
            while len(batch) < self._max_batch:
                try:
                    batch.append(self._items.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write_batch(batch)
            except Exception:  # write_batch logs what it could not write; the thread must go on
                logger.exception("%s: a batch of %d failed", self._name, len(batch))
            with self._settled:
                self._written += len(batch)
                self._settled.notify_all()


def flush_at_exit(writer: BatchWriter, timeout: float = 30.0) -> None:
    atexit.register(writer.flush, timeout)
