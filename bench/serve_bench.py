"""Serving benchmark: N concurrent HTTP clients against gunicorn, batching on and off, in one run.

    .venv/bin/python bench/serve_bench.py                      # tiny model, 16 clients, writes bench/RESULTS.md
    .venv/bin/python bench/serve_bench.py --model /path/to/Qwen2.5-VL-7B-Instruct --device cuda

For each mode (batching on: VLM_MAX_BATCH_SIZE=--batch-size; off: 1) it starts gunicorn exactly as
`make demo` does, waits for /health, warms up, then drives it with --clients concurrent clients
sending a mix of text and image requests, and reports requests/s, output tokens/s, latency
percentiles and time to first token (as the server measured it). It then measures:
- the server's own overhead per request: the same request sequentially over HTTP against the engine
  called in-process (backend.prepare + engine.submit, no Django, no HTTP), alternately, p50 against p50;
- how fast a request is refused when the queue is full (VLM_MAX_QUEUE=1, long requests in flight).
Results go to --output (bench/RESULTS.md) with the machine, the date and the command.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers import Gunicorn, gunicorn  # noqa: E402  (the same launcher the tests use)

DEFAULT_MODEL = ROOT / "models" / "tiny-qwen2.5-vl"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def image_data_uri(seed: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (320, 240), ((seed * 37) % 256, (seed * 91) % 256, 120)).save(buffer, format="JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def request_body(index: int, max_new_tokens: int, image_every: int) -> dict:
    """Mostly text; every `image_every`-th request carries a 320x240 image (0: text only)."""
    text = f"Request {index}: describe a sunny afternoon in the park in a few sentences."
    if image_every and index % image_every == 0:
        content = [
            {"type": "image", "image": image_data_uri(index)},
            {"type": "text", "text": "What is in this image?"},
        ]
    else:
        content = text
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": max_new_tokens}


@dataclass
class LoadResult:
    mode: str
    requests: int
    failures: int
    seconds: float
    output_tokens: int
    latencies: list[float]
    ttfts: list[float]
    mean_batch_size: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.seconds


def run_load(
    server: Gunicorn, mode: str, *, clients: int, total: int, max_new_tokens: int, image_every: int
) -> LoadResult:
    session_per_thread = threading.local()
    done = []
    lock = threading.Lock()
    started = time.monotonic()

    def one(index: int):
        session = getattr(session_per_thread, "session", None) or requests.Session()
        session_per_thread.session = session
        sent = time.monotonic()
        response = session.post(
            f"{server.base}/api/v1/generate", json=request_body(index, max_new_tokens, image_every), timeout=900
        )
        latency = time.monotonic() - sent
        with lock:
            done.append(1)
            if len(done) % max(1, total // 10) == 0:
                print(f"  [{mode}] {len(done)}/{total} requests, {time.monotonic() - started:.1f} s", flush=True)
        return response, latency

    with ThreadPoolExecutor(clients) as pool:
        outcomes = list(pool.map(one, range(total)))
    seconds = time.monotonic() - started
    ok = [(response.json(), latency) for response, latency in outcomes if response.status_code == 200]
    return LoadResult(
        mode=mode,
        requests=len(ok),
        failures=total - len(ok),
        seconds=seconds,
        output_tokens=sum(body["usage"]["output_tokens"] for body, _ in ok),
        latencies=[latency for _, latency in ok],
        ttfts=[body["timings"]["time_to_first_token_ms"] / 1000 for body, _ in ok],
        mean_batch_size=mean_batch_size(server, [body["request_id"] for body, _ in ok]),
    )


def mean_batch_size(server: Gunicorn, request_ids: list[str]) -> float:
    """Mean rows per batch these requests ran in, from the server's request log."""
    import sqlite3

    wanted = {request_id.replace("-", "") for request_id in request_ids}
    with sqlite3.connect(server.database) as connection:
        sizes = [
            size for key, size in connection.execute("SELECT id, batch_size FROM inference_requestlog") if key in wanted
        ]
    return sum(sizes) / len(sizes) if sizes else float("nan")


class InProcessEngine:
    """The same model behind the engine in this process: backend.prepare + engine.submit, no Django, no HTTP."""

    def __init__(self, model: str, device: str) -> None:
        from inference.backend import QwenVLBackend
        from inference.engine import Engine

        self.backend = QwenVLBackend(model, device=device)
        self.backend.load()
        # Batch size 1, as on the HTTP server it is compared with: no batch-collection wait on either side.
        self.engine = Engine(self.backend, max_batch_size=1)
        self.engine.start()

    def latency(self, body: dict) -> float:
        from inference.engine import Job
        from inference.sampling import RowSampling

        received = time.monotonic()
        row = self.backend.prepare(body["messages"])
        job = Job(
            row=row,
            sampling=RowSampling(temperature=body["temperature"], top_p=body["top_p"]),
            max_new_tokens=body["max_new_tokens"],
            received_at=received,
            preprocess_s=time.monotonic() - received,
            deadline=received + 300,
        )
        self.engine.submit(job).result()
        return time.monotonic() - received

    def stop(self) -> None:
        self.engine.stop()


def overhead_latencies(server: Gunicorn, engine: InProcessEngine, body: dict, count: int) -> dict[str, list[float]]:
    """The same request over HTTP and in-process, alternately: a shared machine's speed drifts by tens of
    percent within minutes, and alternating makes both sides see the same drift."""
    session = requests.Session()
    for _ in range(5):  # warm both
        session.post(f"{server.base}/api/v1/generate", json=body, timeout=300)
        engine.latency(body)
    latencies: dict[str, list[float]] = {"http": [], "engine": []}
    for _ in range(count):
        sent = time.monotonic()
        response = session.post(f"{server.base}/api/v1/generate", json=body, timeout=300)
        latencies["http"].append(time.monotonic() - sent)
        assert response.status_code == 200, response.text
        latencies["engine"].append(engine.latency(body))
    return latencies


def refusal_latencies(model: str, device: str, workdir: Path, count: int) -> list[float]:
    """Time to a 503 while the queue is full (one long request running, one waiting)."""
    long_body = {"messages": [{"role": "user", "content": "long"}], "max_new_tokens": 4000}
    blockers = ThreadPoolExecutor(2)
    with gunicorn(workdir, model=model, VLM_DEVICE=device, VLM_MAX_BATCH_SIZE="1", VLM_MAX_QUEUE="1") as server:
        # One after the other: sent together, the second could find the first still queued and be refused.
        running = []
        for _ in range(2):
            running.append(
                blockers.submit(requests.post, f"{server.base}/api/v1/generate", json=long_body, timeout=900)
            )
            time.sleep(1.0)
        if any(blocker.done() for blocker in running):
            raise RuntimeError("a long request ended before the queue was full: " + running[0].result().text[:200])
        session = requests.Session()
        latencies = []
        for _ in range(count):
            sent = time.monotonic()
            response = session.post(f"{server.base}/api/v1/generate", json=request_body(0, 8, 0), timeout=30)
            latencies.append(time.monotonic() - sent)
            assert response.status_code == 503, response.text
        blockers.shutdown(wait=False, cancel_futures=True)
        return latencies


def machine_description() -> str:
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 1024**2:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){memory}, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def write_results(path: Path, args, results: list[LoadResult], overhead: dict, refusals: list[float]) -> str:
    batched, unbatched = results
    lines = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {machine_description()}",
        f"- Model: `{args.model}` on {args.device}",
        f"- Command: `{' '.join(shlex.quote(part) for part in [Path(sys.executable).name, *sys.argv])}`",
        f"- Load: {args.clients} concurrent clients, {args.requests} requests per mode, max_new_tokens "
        f"{args.max_new_tokens}, temperature 0.7, top_p 0.9, "
        + (f"every {args.image_every}th request with a 320x240 JPEG" if args.image_every else "text only"),
        "",
        "| mode | requests/s | output tokens/s | p50 latency ms | p95 | p99 | TTFT p50 ms | TTFT p95 | mean batch | failures |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for result in results:
        lines.append(
            f"| {result.mode} | {result.requests_per_s:.2f} | {result.tokens_per_s:.1f} | "
            f"{ms(percentile(result.latencies, 0.5))} | {ms(percentile(result.latencies, 0.95))} | "
            f"{ms(percentile(result.latencies, 0.99))} | {ms(percentile(result.ttfts, 0.5))} | "
            f"{ms(percentile(result.ttfts, 0.95))} | {result.mean_batch_size:.1f} | {result.failures} |"
        )
    ratio = batched.tokens_per_s / unbatched.tokens_per_s
    lines += [
        "",
        f"**Batching on / off, output tokens/s: {ratio:.2f}x**",
        "",
        "| server overhead (same request, sequential, HTTP and in-process alternately) | p50 ms | p95 ms |",
        "| --- | ---: | ---: |",
        f"| over HTTP (gunicorn, validation, request log, metrics) | {ms(percentile(overhead['http'], 0.5))} | "
        f"{ms(percentile(overhead['http'], 0.95))} |",
        f"| engine in-process | {ms(percentile(overhead['engine'], 0.5))} | {ms(percentile(overhead['engine'], 0.95))} |",
        f"| **overhead (HTTP p50 - engine p50)** | "
        f"**{(percentile(overhead['http'], 0.5) - percentile(overhead['engine'], 0.5)) * 1000:.1f}** | |",
        "",
        f"Refused with 503 while the queue is full: p50 {percentile(refusals, 0.5) * 1000:.1f} ms, "
        f"max {max(refusals) * 1000:.1f} ms over {len(refusals)} requests.",
        "",
    ]
    text = "\n".join(lines)
    _write_section(path, text)
    return text


START, END = "<!-- serve_bench: start -->", "<!-- serve_bench: end -->"


def _write_section(path: Path, text: str) -> None:
    """Replace this benchmark's section of the results file, keeping what else it holds (GPU figures, notes)."""
    section = f"{START}\n{text}\n{END}"
    existing = path.read_text() if path.exists() else ""
    if START in existing and END in existing:
        before, rest = existing.split(START, 1)
        after = rest.split(END, 1)[1]
        path.write_text(before + section + after)
    else:
        path.write_text(section + "\n" + existing)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL), help="model folder or hub id (default: the tiny model)")
    parser.add_argument("--device", default="cpu", help="VLM_DEVICE for the server (default cpu)")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--requests", type=int, default=96, help="requests per mode")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16, help="VLM_MAX_BATCH_SIZE with batching on")
    parser.add_argument("--batch-wait-ms", type=float, default=10.0, help="VLM_BATCH_WAIT_MS")
    parser.add_argument("--image-every", type=int, default=4, help="every Nth request carries an image (0: none)")
    parser.add_argument("--overhead-requests", type=int, default=40)
    parser.add_argument("--output", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()

    if args.model == str(DEFAULT_MODEL):
        from inference.tiny_model import build_tiny_model, is_tiny_model_built

        if not is_tiny_model_built(DEFAULT_MODEL):
            print("building the tiny model ...", flush=True)
            build_tiny_model(DEFAULT_MODEL)

    results = []
    overhead_body = {
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "max_new_tokens": 8,
        "temperature": 0.7,
        "top_p": 0.9,
    }
    with tempfile.TemporaryDirectory(prefix="vlm-bench-") as tmp:
        workdir = Path(tmp)
        overhead: dict[str, list[float]] = {}
        for mode, batch_size in (("batching on", args.batch_size), ("batching off", 1)):
            print(f"{mode}: starting gunicorn (VLM_MAX_BATCH_SIZE={batch_size}) ...", flush=True)
            settings = {
                "VLM_DEVICE": args.device,
                "VLM_MAX_BATCH_SIZE": str(batch_size),
                "VLM_BATCH_WAIT_MS": str(args.batch_wait_ms),
                "LOG_LEVEL": "WARNING",
            }
            with gunicorn(workdir, model=args.model, ready_timeout=900, **settings) as server:
                run_load(
                    server, f"{mode} warm-up", clients=args.clients, total=args.clients, max_new_tokens=4, image_every=0
                )
                result = run_load(
                    server,
                    mode,
                    clients=args.clients,
                    total=args.requests,
                    max_new_tokens=args.max_new_tokens,
                    image_every=args.image_every,
                )
                print(
                    f"  {mode}: {result.tokens_per_s:.1f} output tokens/s, mean batch {result.mean_batch_size:.1f}, "
                    f"{result.failures} failures",
                    flush=True,
                )
                results.append(result)
                if batch_size == 1:
                    print("overhead: the same request over HTTP and in-process, alternately ...", flush=True)
                    engine = InProcessEngine(args.model, args.device)
                    overhead = overhead_latencies(server, engine, overhead_body, args.overhead_requests)
                    engine.stop()
        print("refusal latency with a full queue ...", flush=True)
        refusals = refusal_latencies(args.model, args.device, workdir, 20)
    print(write_results(Path(args.output), args, results, overhead, refusals))


if __name__ == "__main__":
    main()
