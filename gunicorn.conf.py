"""gunicorn settings: `gunicorn -c gunicorn.conf.py vlmsite.wsgi`.

One worker holds one copy of the model (VLM_WORKERS, default 1); its threads serve concurrent clients
while the engine batches their generations. No preload_app: CUDA does not survive fork, so each worker
loads the model itself, from InferenceConfig.ready().

Metrics: every worker writes its Prometheus values to files in PROMETHEUS_MULTIPROC_DIR and /metrics
merges them, so totals are right whichever worker Prometheus reaches, and survive a worker's restart.
"""

import os
import shutil
import tempfile
from pathlib import Path

bind = f"{os.environ.get('HOST', '0.0.0.0')}:{os.environ.get('PORT', '8000')}"
workers = int(os.environ.get("VLM_WORKERS", "1"))
worker_class = "gthread"
# Threads wait on the engine, they do not compute: enough to fill a batch and the queue behind it.
threads = int(os.environ.get("VLM_THREADS", "96"))
preload_app = False
# gthread's main loop keeps heartbeating while threads wait on long generations, so this only
# catches a worker that is truly stuck; it must still outlast the model's load.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "600"))
graceful_timeout = 30
keepalive = 5
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# prometheus_client picks multiprocess mode when it is first imported, so the directory must be in the
# environment before any worker starts: set here, in the master, and inherited. Without one, a private
# temporary directory for this server (removed on exit).
OWN_METRICS_DIR_PREFIX = "vlm-prometheus-"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix=OWN_METRICS_DIR_PREFIX)


def on_starting(server):
    """Empty the metrics directory: an earlier run's files would add its counts to this one's."""
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def child_exit(server, worker):
    """A worker is gone: its live gauges (loaded, running, waiting, VRAM) leave the totals, its counts stay."""
    # Imported here: at the top of this file it would come before the environment is set, and forked
    # workers would inherit prometheus_client's single-process mode.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """Write the request-log rows still queued before the worker goes (atexit would too, but not after a
    graceful-timeout kill)."""
    from inference.services import request_log_writer

    if not request_log_writer.flush(timeout=graceful_timeout / 2):
        server.log.error("worker %s exits with %d request-log rows unwritten", worker.pid, request_log_writer.pending)


def on_exit(server):
    # Only the directory made above; an operator's own directory is left as it is.
    directory = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if directory.parent == Path(tempfile.gettempdir()) and directory.name.startswith(OWN_METRICS_DIR_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)
