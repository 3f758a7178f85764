"""bench/gpu/decode_bench.py runs end to end on the CPU with the small config (it is meant for a GPU)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_decode_bench_runs_on_the_cpu_with_a_small_config(tmp_path):
    figures = tmp_path / "figures.json"
    completed = subprocess.run(
        [sys.executable, "bench/gpu/decode_bench.py", "--config", "small", "--device", "cpu", "--batch-sizes", "1,2",
         "--new-tokens", "4", "--prompt-tokens", "8", "--json", str(figures)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(figures.read_text())["results"]
    assert [result["batch"] for result in results] == [1, 2]
    for result in results:
        assert result["decode_tokens_per_s"] > 0
        assert result["engine_greedy_tokens_per_s"] > 0 and result["engine_sampled_tokens_per_s"] > 0
    assert "| batch | decode tokens/s (generate)" in completed.stdout
