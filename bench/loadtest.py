"""Load test: 16 clients for 60 s of mixed traffic against gunicorn serving the tiny model (`make loadtest`).

Each client loops over a mix of what real and hostile clients send: generations (text, image, streamed,
OpenAI-style), VRAM calls, invalid parameters, refused media (loopback URLs, bombs, bad base64), missing and
wrong API keys, a rate-limited key, bodies over the size limit and unknown paths. Keys are required, as in
production; rate counts live in Redis when it answers.

It passes when no response is an unexpected 5xx (a 503 for a full queue, with Retry-After, is the designed
answer to overload and is counted apart), every request got one of the statuses its kind allows, and the
request log holds exactly one row per request sent, with the status the client saw.

    .venv/bin/python bench/loadtest.py [--clients 16] [--seconds 60]

Writes bench/out/loadtest.json and prints a summary; exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.api_keys import create_api_key  # noqa: E402
from tests.redis_cache import redis_answers  # noqa: E402
from tests.samples import data_uri, image_bytes, png_declaring  # noqa: E402
from tests.servers import Gunicorn, gunicorn  # noqa: E402

TINY_MODEL = ROOT / "models" / "tiny-qwen2.5-vl"
OUT = ROOT / "bench" / "out" / "loadtest.json"
GENERATE = "/api/v1/generate"
MAX_BODY_BYTES = 1024 * 1024  # the server's VLM_MAX_BODY_BYTES here, so a 413 costs little to send
IMAGE = data_uri(image_bytes())
BOMB = data_uri(png_declaring(100_000, 100_000))


def ask(content, max_new_tokens: int = 8, **fields) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": max_new_tokens, **fields}


@dataclass(frozen=True)
class Kind:
    """One kind of request: how to send it, how often, and the statuses it may get."""

    name: str
    weight: int
    allowed: frozenset[int]
    send: Callable[[requests.Session, str, dict, dict], requests.Response]  # (session, base, keys, headers)


def _post(path: str, body: dict, key: str | None = "client", **kwargs) -> Callable:
    def send(session: requests.Session, base: str, keys: dict, headers: dict) -> requests.Response:
        auth = {"Authorization": f"Bearer {keys[key]}"} if key else {}
        return session.post(base + path, json=body, headers={**headers, **auth}, timeout=120, **kwargs)

    return send


def _get(path: str, key: str | None = "client") -> Callable:
    def send(session: requests.Session, base: str, keys: dict, headers: dict) -> requests.Response:
        auth = {"X-API-Key": keys[key]} if key else {}
        return session.get(base + path, headers={**headers, **auth}, timeout=120)

    return send


def _streamed(session: requests.Session, base: str, keys: dict, headers: dict) -> requests.Response:
    auth = {"Authorization": f"Bearer {keys['client']}"}
    response = session.post(
        base + GENERATE, json=ask("Tell a story", stream=True), headers={**headers, **auth}, timeout=120, stream=True
    )
    response.content  # noqa: B018  (read the whole event stream)
    return response


def _oversized(session: requests.Session, base: str, keys: dict, headers: dict) -> requests.Response:
    # On a connection of its own: the server answers 413 without reading the body, then closes it.
    auth = {"Authorization": f"Bearer {keys['client']}"}
    body = json.dumps(ask("x" * (MAX_BODY_BYTES + 1))).encode()
    return requests.post(base + GENERATE, data=body, headers={**headers, **auth, "Content-Type": "application/json"})


OK_OR_FULL = frozenset({200, 503})  # 503 only with Retry-After: the queue was full
KINDS = [
    Kind("generate-text", 30, OK_OR_FULL, _post(GENERATE, ask("Describe a sunny day"))),
    Kind("generate-image", 15, OK_OR_FULL, _post(GENERATE, ask([{"type": "image", "image": IMAGE}, {"type": "text", "text": "?"}]))),
    Kind("generate-streamed", 8, OK_OR_FULL, _streamed),
    Kind("openai-chat", 8, OK_OR_FULL, _post("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8})),
    Kind("vram-status", 5, frozenset({200}), _get("/vram_status")),
    Kind("clear-vram-admin", 1, OK_OR_FULL, _post("/clear_vram", {}, key="admin")),
    Kind("clear-vram-plain-key", 2, frozenset({403}), _post("/clear_vram", {})),
    Kind("invalid-parameters", 6, frozenset({400}), _post(GENERATE, ask("hi", temperature=5))),
    Kind("ssrf-loopback", 4, frozenset({400}), _post(GENERATE, ask([{"type": "image", "image": "http://127.0.0.1:22/x.png"}]))),
    Kind("decompression-bomb", 3, frozenset({400}), _post(GENERATE, ask([{"type": "image", "image": BOMB}]))),
    Kind("bad-base64", 3, frozenset({400}), _post(GENERATE, ask([{"type": "image", "image": "data:image/png;base64,@@"}]))),
    Kind("no-api-key", 4, frozenset({401}), _post(GENERATE, ask("hi"), key=None)),
    Kind("wrong-api-key", 3, frozenset({401}), _post(GENERATE, ask("hi"), key="wrong")),
    Kind("rate-limited-key", 4, frozenset({200, 429}), _get("/vram_status", key="limited")),
    Kind("body-over-limit", 2, frozenset({413}), _oversized),
    Kind("unknown-path", 2, frozenset({404}), _get("/api/v1/nothing-here")),
]  # fmt: skip


@dataclass
class Outcome:
    kind: str
    request_id: str
    status: int  # 0: no response (connection error)
    seconds: float
    retry_after: bool
    error: str = ""


def client_loop(base: str, keys: dict, stop_at: float, seed: int) -> list[Outcome]:
    chooser = random.Random(seed)
    outcomes = []
    with requests.Session() as session:
        while time.monotonic() < stop_at:
            kind = chooser.choices(KINDS, weights=[kind.weight for kind in KINDS])[0]
            request_id = str(uuid.uuid4())
            started = time.monotonic()
            try:
                response = kind.send(session, base, keys, {"X-Request-ID": request_id})
                outcome = Outcome(kind.name, request_id, response.status_code, 0.0, "Retry-After" in response.headers)
            except requests.RequestException as error:
                outcome = Outcome(kind.name, request_id, 0, 0.0, False, repr(error)[:200])
            outcome.seconds = time.monotonic() - started
            outcomes.append(outcome)
    return outcomes


def stored_rows(server: Gunicorn) -> dict[str, int]:
    with sqlite3.connect(server.database) as connection:
        rows = connection.execute("SELECT id, status_code FROM inference_requestlog").fetchall()
    return {str(uuid.UUID(row_id)): status for row_id, status in rows}


def wait_for_rows(server: Gunicorn, expected: int, timeout: float = 30.0) -> dict[str, int]:
    """Rows are written once each response is sent: wait until the last ones are in (or time runs out)."""
    deadline = time.monotonic() + timeout
    while len(rows := stored_rows(server)) < expected and time.monotonic() < deadline:
        time.sleep(0.2)
    return rows


def summarize(outcomes: list[Outcome], rows: dict[str, int], clients: int, seconds: float, alive: bool) -> dict:
    allowed = {kind.name: kind.allowed for kind in KINDS}
    by_kind: dict[str, Counter] = defaultdict(Counter)
    for outcome in outcomes:
        by_kind[outcome.kind][outcome.status] += 1
    overloaded = [o for o in outcomes if o.status == 503 and o.retry_after]
    unexpected_5xx = [o for o in outcomes if o.status >= 500 and o not in overloaded]
    unexpected_status = [o for o in outcomes if o.status not in allowed[o.kind]]
    sent = {o.request_id: o.status for o in outcomes if o.status}
    generation = [o.seconds for o in outcomes if o.kind.startswith("generate") and o.status == 200]
    return {
        "clients": clients,
        "seconds": round(seconds, 1),
        "requests": len(outcomes),
        "requests_per_s": round(len(outcomes) / seconds, 1),
        "statuses": dict(sorted(Counter(o.status for o in outcomes).items())),
        "by_kind": {name: dict(sorted(counts.items())) for name, counts in sorted(by_kind.items())},
        "unexpected_5xx": len(unexpected_5xx),
        "overloaded_503_with_retry_after": len(overloaded),
        "unexpected_statuses": [(o.kind, o.status, o.error) for o in unexpected_status][:20],
        "connection_errors": sum(1 for o in outcomes if o.status == 0),
        "log_rows": len(rows),
        "log_rows_missing": len(sent.keys() - rows.keys()),
        "log_rows_extra": len(rows.keys() - sent.keys()),
        "log_rows_with_other_status": sum(1 for rid, status in sent.items() if rid in rows and rows[rid] != status),
        "generation_latency_s": {
            "p50": round(statistics.median(generation), 3) if generation else None,
            "p95": round(statistics.quantiles(generation, n=20)[-1], 3) if len(generation) >= 20 else None,
        },
        "server_alive": alive,
    }


def passed(report: dict) -> bool:
    return (
        report["server_alive"]
        and report["unexpected_5xx"] == 0
        and not report["unexpected_statuses"]
        and report["log_rows"] == report["requests"]
        and report["log_rows_missing"] == report["log_rows_extra"] == report["log_rows_with_other_status"] == 0
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    cache = {"CACHE_URL": "redis://127.0.0.1:6379/1"} if redis_answers() else {}
    with tempfile.TemporaryDirectory() as workdir, gunicorn(
        Path(workdir),
        model=str(TINY_MODEL),
        VLM_REQUIRE_API_KEY="true",
        VLM_MAX_BODY_BYTES=str(MAX_BODY_BYTES),
        VLM_THREADS=str(args.clients * 2),
        **cache,
    ) as server:  # fmt: skip
        keys = {
            "client": create_api_key(server, "load client"),
            "admin": create_api_key(server, "load admin", admin=True),
            "limited": create_api_key(server, "load limited", rate_limit="10/min"),
            "wrong": "wrongpfx.wrongsecretwrongsecretwrongsecret",
        }
        print(f"{args.clients} clients for {args.seconds:g} s against {server.base} (cache: {cache or 'local memory'})")
        started = time.monotonic()
        stop_at = started + args.seconds
        start_together = threading.Barrier(args.clients)

        def client(number: int) -> list[Outcome]:
            start_together.wait()
            return client_loop(server.base, keys, stop_at, seed=number)

        with ThreadPoolExecutor(args.clients) as pool:
            outcomes = [outcome for batch in pool.map(client, range(args.clients)) for outcome in batch]
        elapsed = time.monotonic() - started
        rows = wait_for_rows(server, len(outcomes))
        alive = server.process.poll() is None and requests.get(f"{server.base}/health", timeout=10).status_code == 200
    report = summarize(outcomes, rows, args.clients, elapsed, alive)
    report["passed"] = passed(report)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    print(
        f"\n{'PASSED' if report['passed'] else 'FAILED'}: {report['requests']} requests in {report['seconds']} s "
        f"({report['requests_per_s']}/s), {report['unexpected_5xx']} unexpected 5xx, "
        f"{report['log_rows']} log rows for {report['requests']} requests sent"
    )
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
