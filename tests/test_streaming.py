"""Streaming on the spec's endpoint: `"stream": true` answers with Server-Sent Events, through the real
pipeline on the tiny model (the Django test client, then real gunicorn for sockets and timing)."""

from __future__ import annotations

import json
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import torch

from inference.models import RequestLog
from inference.runtime import runtime
from inference.streaming import IncrementalDetokenizer, StopMatcher

from .faults import count_decode_steps, fail_generation_after
from .samples import data_uri, image_bytes
from .servers import gunicorn

GENERATE = "/api/v1/generate"
SPEC_BODY_KEYS = {"response", "usage", "processing_time", "request_id", "finish_reason", "timings"}


def request(content="Tell me a story.", **extra) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": 12, "temperature": 0, **extra}


def parse_events(raw: bytes) -> list[tuple[str | None, dict]]:
    """(event name, data) for each Server-Sent Event in a body."""
    events = []
    for block in raw.decode().split("\n\n"):
        if not block:
            continue
        name, data = None, []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, json.loads("\n".join(data))))
    return events


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- text from tokens ---------------------------------------------------------------------------


def test_deltas_add_up_to_the_decoded_text_and_never_split_a_character(loaded_model):
    tokenizer = loaded_model.backend.processor.tokenizer
    decode = loaded_model.backend.decode
    # Byte-level BPE splits these characters over several tokens.
    text = "Héllo wörld, 你好世界 🙂👍🏽 — 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ok"
    ids = tokenizer.encode(text)
    detokenizer = IncrementalDetokenizer(decode)
    deltas = [detokenizer.push(token) for token in ids]
    assert "".join(deltas) == decode(ids) == text
    assert not any("\ufffd" in delta for delta in deltas)
    assert sum(bool(delta) for delta in deltas) < len(ids)  # some tokens were half a character
    # Arbitrary token ids, special tokens included (they decode to nothing).
    random_ids = torch.randint(0, len(tokenizer), (400,), generator=torch.Generator().manual_seed(5)).tolist()
    detokenizer = IncrementalDetokenizer(decode)
    streamed = "".join(detokenizer.push(token) for token in random_ids)
    whole = decode(random_ids)
    assert whole.startswith(streamed) and len(whole) - len(streamed) <= 2  # at most a held-back tail


def test_stop_strings_cut_the_text_and_are_never_streamed_in_part():
    matcher = StopMatcher(["lo W"])
    # "l" and then "lo " could begin the stop string: held back until "W" decides.
    assert [matcher.feed(piece) for piece in ("Hel", "lo ", "Wor", "ld")] == ["He", "l", "", ""]
    assert (matcher.matched, matcher.text) == ("lo W", "Hel")

    matcher = StopMatcher(["END"])
    assert [matcher.feed(piece) for piece in ("abcE", "Nx", "yz")] == ["abc", "ENx", "yz"]
    assert matcher.matched is None

    # The earliest stop string wins; one spanning deltas is found.
    matcher = StopMatcher(["cd", "b"])
    assert matcher.feed("ab") == "a" and matcher.matched == "b"
    matcher = StopMatcher(["xyz", "zz"])
    assert [matcher.feed(piece) for piece in ("axy", "zz")] == ["a", ""]
    assert (matcher.matched, matcher.text) == ("xyz", "a")

    matcher = StopMatcher([])
    assert matcher.feed("anything") == "anything"


# --- the spec endpoint, streamed ------------------------------------------------------------------


def test_streamed_answer_is_the_plain_answer_and_is_logged_the_same(api, metrics_delta):
    ok = metrics_delta("vlm_requests_total", model_name=None, endpoint=GENERATE, status="200")
    tokens = metrics_delta("vlm_generation_tokens_total")
    plain = api.post(GENERATE, request()).json()

    response = api.post(GENERATE, request(stream=True), Accept="text/event-stream")
    assert response.status_code == 200
    assert response.streaming
    assert response["Content-Type"] == "text/event-stream; charset=utf-8"
    assert response["Cache-Control"] == "no-cache"
    events = parse_events(b"".join(response.streaming_content))
    *deltas, (final_name, final) = events
    assert len(deltas) > 1 and all(name is None and set(data) == {"delta"} for name, data in deltas)
    assert final_name == "done"
    assert set(final) == SPEC_BODY_KEYS
    assert "".join(data["delta"] for _, data in deltas) == final["response"] == plain["response"]
    assert final["usage"] == plain["usage"] and final["usage"]["output_tokens"] == 12
    assert final["finish_reason"] == "length"
    assert final["processing_time"] > 0
    assert final["request_id"] == response["X-Request-ID"]
    assert final["timings"]["time_to_first_token_ms"] < final["timings"]["total_ms"]

    streamed_row = RequestLog.objects.get(id=final["request_id"])
    plain_row = RequestLog.objects.get(id=plain["request_id"])
    same_fields = (
        "endpoint", "method", "status_code", "model", "max_new_tokens", "temperature", "top_p", "num_messages",
        "prompt_preview", "input_tokens", "output_tokens", "total_tokens", "visual_tokens", "finish_reason",
        "error_reason",
    )  # fmt: skip
    assert [getattr(streamed_row, name) for name in same_fields] == [getattr(plain_row, name) for name in same_fields]
    assert streamed_row.status_code == 200 and streamed_row.model == runtime.model_name
    assert streamed_row.ttft_ms > 0 and streamed_row.total_ms >= streamed_row.ttft_ms
    assert (ok(), tokens()) == (2, 24)


def test_streamed_image_question(api):
    content = [{"type": "image", "image": data_uri(image_bytes((90, 60)))}, {"type": "text", "text": "What is it?"}]
    response = api.post(GENERATE, request(content, stream=True))
    events = parse_events(b"".join(response.streaming_content))
    assert events[-1][0] == "done"
    row = RequestLog.objects.get(id=events[-1][1]["request_id"])
    assert (row.status_code, row.num_images, row.media[0]["size"]) == (200, 1, [90, 60])
    assert row.visual_tokens > 0


def test_errors_before_the_first_token_keep_their_status_codes(api, monkeypatch):
    # Errors are JSON even for a client that said it accepts only an event stream.
    invalid = api.post(GENERATE, {"messages": [], "stream": True}, Accept="text/event-stream")
    bad_media = api.post(GENERATE, request([{"type": "image", "image": "data:image/png;base64,!!"}], stream=True))
    wrong_stream = api.post(GENERATE, request(stream="sometimes"))
    monkeypatch.setattr(runtime.engine, "max_queue", 0)
    full = api.post(GENERATE, request(stream=True))
    for response, status in ((invalid, 400), (bad_media, 400), (wrong_stream, 400), (full, 503)):
        assert response.status_code == status
        assert not response.streaming and response["Content-Type"] == "application/json"
    assert bad_media.json()["detail"].startswith("messages[0].content[0].image: ")
    assert wrong_stream.json()["detail"].startswith("stream: ")
    assert full["Retry-After"] == "1"
    rows = RequestLog.objects.order_by("received_at")
    assert [(row.status_code, row.error_reason) for row in rows] == [
        (400, "validation"),
        (400, "media"),
        (400, "validation"),
        (503, "overloaded"),
    ]


def test_a_failure_after_the_first_token_is_a_final_error_event(api, monkeypatch, metrics_delta):
    failures = metrics_delta("vlm_request_failure_total", reason="internal")
    fail_generation_after(monkeypatch, 6)
    response = api.post(GENERATE, request(max_new_tokens=50, stream=True))
    assert response.status_code == 200  # the stream had begun
    *deltas, (name, error) = parse_events(b"".join(response.streaming_content))
    assert deltas and all("delta" in data for _, data in deltas)
    assert name == "error"
    assert error == {"detail": "Internal server error.", "status": 500, "request_id": response["X-Request-ID"]}
    row = RequestLog.objects.get(id=response["X-Request-ID"])
    assert (row.status_code, row.error_reason, row.output_tokens) == (500, "internal", None)
    assert failures() == 1


def settled(counter, quiet_s: float = 0.5) -> bool:
    before = counter()
    time.sleep(quiet_s)
    return counter() == before


def test_a_client_that_goes_away_mid_stream_stops_its_generation(api, monkeypatch):
    steps = count_decode_steps(monkeypatch)
    response = api.post(GENERATE, request(max_new_tokens=4000, stream=True))
    chunks = iter(response.streaming_content)
    received = [next(chunks), next(chunks)]
    assert all(chunk.startswith(b"data: ") for chunk in received)
    # What a WSGI server does when a write to the client fails: it closes the body.
    response.close()
    # Stopped at its next token, nowhere near 4000 (which take over a minute on the tiny model).
    assert wait_for(lambda: settled(steps), timeout=5)
    assert steps() < 100
    row = RequestLog.objects.get(id=response["X-Request-ID"])
    assert (row.status_code, row.error_reason) == (499, "cancelled")


# --- over real gunicorn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    with gunicorn(tmp_path_factory.mktemp("streaming"), model=str(tiny_model_path)) as running:
        yield running


def test_events_leave_gunicorn_as_they_are_generated(server):
    """The first text arrives long before the last: gunicorn does not buffer the stream."""
    started = time.monotonic()
    arrivals, final = [], None
    with requests.post(f"{server.base}{GENERATE}", json=request(max_new_tokens=64, stream=True), stream=True) as reply:
        assert reply.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        for line in reply.iter_lines():
            if line.startswith(b"data: "):
                arrivals.append(time.monotonic() - started)
                final = json.loads(line[6:])
    assert final["usage"]["output_tokens"] == 64 and len(arrivals) > 10
    # 64 tokens take about a second here; the first event must not wait for them.
    assert arrivals[0] < arrivals[-1] / 3


def read_stream(base: str, body: dict) -> tuple[str, dict]:
    """The concatenated deltas and the final event of one streamed request."""
    with requests.post(f"{base}{GENERATE}", json=body, stream=True, timeout=120) as reply:
        events = [json.loads(line[6:]) for line in reply.iter_lines() if line.startswith(b"data: ")]
    return "".join(event.get("delta", "") for event in events[:-1]), events[-1]


def test_concurrent_streams_each_get_their_own_text(server):
    """Rows of one batch end at different lengths; each stream carries only its own row's text."""
    bodies = [
        request(f"Question {index}: what is {index} squared?", max_new_tokens=8 + 6 * index, stream=True)
        for index in range(6)
    ]
    with ThreadPoolExecutor(len(bodies)) as pool:
        results = list(pool.map(lambda body: read_stream(server.base, body), bodies))
    for body, (text, final) in zip(bodies, results, strict=True):
        assert final["usage"]["output_tokens"] == body["max_new_tokens"]
        assert text == final["response"]
    assert len({final["request_id"] for _, final in results}) == len(bodies)


def test_a_client_that_disconnects_from_gunicorn_mid_stream_is_cancelled(server):
    reply = requests.post(
        f"{server.base}{GENERATE}", json=request(max_new_tokens=4000, stream=True), stream=True, timeout=60
    )
    request_id = reply.headers["X-Request-ID"]
    lines = reply.iter_lines()
    assert next(line for line in lines if line).startswith(b'data: {"delta"')
    reply.close()  # drops the connection mid-stream
    # The server notices on its next writes, cancels the job, and the row says so.
    row = None
    deadline = time.monotonic() + 15
    while row is None and time.monotonic() < deadline:
        with sqlite3.connect(server.database) as connection:
            row = connection.execute(
                "SELECT status_code, error_reason FROM inference_requestlog WHERE id = ?",
                (request_id.replace("-", ""),),
            ).fetchone()
        time.sleep(0.1)
    assert row == (499, "cancelled")
    # And the model is free again, well before 4000 tokens could have been generated.
    started = time.monotonic()
    quick = requests.post(f"{server.base}{GENERATE}", json=request(max_new_tokens=2), timeout=60)
    assert quick.status_code == 200 and time.monotonic() - started < 5
