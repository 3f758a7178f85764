"""bench/request_log_bench.py runs end to end, small: on SQLite, and again on PostgreSQL when `make test` runs the
`postgres`-marked tests with DATABASE_URL (in a database of its own, never the one DATABASE_URL names)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.postgres


def bench_database() -> list[str]:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith(("postgres://", "postgresql://")):
        return []  # the bench's own SQLite file
    return ["--database", urlunsplit(urlsplit(url)._replace(path="/vlm_request_log_bench_test"))]


def test_request_log_bench_writes_every_row_and_renders_the_dashboard():
    completed = subprocess.run(
        [sys.executable, "bench/request_log_bench.py", "--writers", "8", "--writes", "400", "--rows", "3000",
         "--repeats", "1", *bench_database()],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = completed.stdout
    assert completed.returncode == 0, output[-2000:] + completed.stderr[-3000:]
    written = re.findall(r"(\d+) rows stored of (\d+) written; (\d+) errors", output)
    assert written == [("400", "400", "0")] * 2, output  # inline, then the writer thread
    for window in ("hour", "day", "week"):
        assert f"dashboard, {window} window, 3000 rows, finished buckets kept: " in output
        assert f"dashboard, {window} window, 3000 rows, every bucket from the rows: " in output
