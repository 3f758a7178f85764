"""gunicorn settings: `gunicorn -c gunicorn.conf.py vlmsite.wsgi`.

One worker holds one copy of the model (VLM_WORKERS, default 1); its threads serve concurrent clients
while the engine batches their generations. No preload_app: CUDA does not survive fork, so each worker
loads the model itself, from InferenceConfig.ready().
"""

import os

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
