"""Start the real gunicorn server, as `make demo` does, for tests and benchmarks."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gunicorn:
    base: str
    port: int
    database: Path
    log_path: Path
    process: subprocess.Popen
    health_states: list[str] = field(default_factory=list)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn(workdir: Path, *, model: str, ready_timeout: float = 180.0, **settings: str) -> Iterator[Gunicorn]:
    """gunicorn serving `model` on a free loopback port with a fresh SQLite database in `workdir`.

    `settings` are extra environment variables (VLM_MAX_BATCH_SIZE="1", ...). Yields once /health
    says healthy, and always stops the server, whatever happens in between.
    """
    port = free_port()
    database = workdir / f"db-{port}.sqlite3"
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{database}",
        "VLM_MODEL": model,
        "VLM_DEVICE": os.environ.get("VLM_DEVICE", "cpu"),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "SECRET_KEY": os.environ.get("SECRET_KEY") or "test-secret-key",
        **settings,
    }
    python = sys.executable
    subprocess.run([python, "manage.py", "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    log_path = workdir / f"gunicorn-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [str(Path(python).parent / "gunicorn"), "-c", "gunicorn.conf.py", "vlmsite.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Gunicorn(f"http://127.0.0.1:{port}", port, database, log_path, process)
    try:
        _wait_until_healthy(server, ready_timeout)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_healthy(server: Gunicorn, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError("gunicorn exited:\n" + server.log()[-4000:])
        # Until the worker has imported Django and torch, connections wait in the listen backlog.
        with contextlib.suppress(requests.ConnectionError, requests.Timeout):
            response = requests.get(f"{server.base}/health", timeout=2)
            server.health_states.append(response.json()["status"])
            if response.status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become healthy:\n" + server.log()[-4000:])
