"""Time to the first streamed text against time to the whole answer, as a client sees them over HTTP.

    .venv/bin/python bench/stream_ttft.py                   # tiny model, 256-token answers, 5 runs each
    .venv/bin/python bench/stream_ttft.py --model /path/to/Qwen2.5-VL-7B-Instruct --device cuda

Starts gunicorn as `make demo` does, then, one request at a time and interleaved (greedy, so every
answer has exactly --tokens tokens): POST /api/v1/generate with `"stream": true` (first `data:` event and the final
`done` event), the same without streaming (whole response), and POST /v1/chat/completions streamed
(first content chunk and `[DONE]`). Prints medians in milliseconds as a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.servers import gunicorn  # noqa: E402  (the same launcher the tests use)

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]


def streamed(url: str, body: dict) -> tuple[float, float]:
    """(seconds to the first text, seconds to the end of the stream) for one streamed request."""
    started = time.perf_counter()
    first = None
    with requests.post(url, json=body, stream=True, timeout=600) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            text = event.get("delta") or (event.get("choices") or [{}])[0].get("delta", {}).get("content")
            if text and first is None:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


def whole(url: str, body: dict) -> float:
    started = time.perf_counter()
    requests.post(url, json=body, timeout=600).raise_for_status()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "models" / "tiny-qwen2.5-vl"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    spec_body = {"messages": PROMPT, "max_new_tokens": args.tokens, "temperature": 0}
    openai_body = {"messages": PROMPT, "max_tokens": args.tokens, "temperature": 0, "stream": True}
    with (
        tempfile.TemporaryDirectory() as workdir,
        gunicorn(Path(workdir), model=args.model, VLM_DEVICE=args.device) as server,
    ):
        generate, chat = f"{server.base}/api/v1/generate", f"{server.base}/v1/chat/completions"
        whole(generate, {**spec_body, "max_new_tokens": 4})  # warm-up
        spec_sse, spec_plain, openai_sse = [], [], []
        for _ in range(args.runs):  # interleaved, so a noisy moment on the machine hits all three alike
            spec_sse.append(streamed(generate, {**spec_body, "stream": True}))
            spec_plain.append(whole(generate, spec_body))
            openai_sse.append(streamed(chat, openai_body))

    def ms(values) -> str:
        return f"{statistics.median(values) * 1000:.0f}"

    print(f"{args.tokens}-token answers, {args.model} on {args.device}, {platform.node()}, median of {args.runs}")
    print()
    print("| request | first text ms | whole answer ms |")
    print("| --- | ---: | ---: |")
    print(f"| /api/v1/generate, stream | {ms(f for f, _ in spec_sse)} | {ms(t for _, t in spec_sse)} |")
    print(f"| /api/v1/generate, no stream | - | {ms(spec_plain)} |")
    print(f"| /v1/chat/completions, stream | {ms(f for f, _ in openai_sse)} | {ms(t for _, t in openai_sse)} |")


if __name__ == "__main__":
    main()
