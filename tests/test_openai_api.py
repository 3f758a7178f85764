"""The OpenAI-compatible API, driven by the official `openai` client against real gunicorn serving the
tiny model; a few fault-injection cases through the Django test client."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import openai
import pytest
import requests

from inference.models import RequestLog
from inference.runtime import runtime

from .api_keys import create_api_key
from .faults import fail_generation_after
from .media_origin import MediaOrigin
from .samples import data_uri, image_bytes, video_bytes
from .servers import gunicorn

SERVED_NAME = "qwen2.5-vl-tiny"
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    # Keys required, a served name other than the folder (as operators set them), loopback media allowed.
    with gunicorn(
        tmp_path_factory.mktemp("openai"),
        model=str(tiny_model_path),
        VLM_REQUIRE_API_KEY="true",
        VLM_SERVED_MODEL_NAME=SERVED_NAME,
        VLM_ALLOW_PRIVATE_MEDIA_URLS="true",
    ) as running:
        yield running


@pytest.fixture(scope="module")
def api_key(server) -> str:
    return create_api_key(server, "openai-tests")


@pytest.fixture(scope="module")
def oai(server, api_key) -> openai.OpenAI:
    """The official client with a real key (named so as not to hide pytest-django's `client`)."""
    return openai.OpenAI(base_url=f"{server.base}/v1", api_key=api_key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def auth(api_key) -> dict:
    """The header the official client sends, for requests made without it."""
    return {"Authorization": f"Bearer {api_key}"}


@pytest.fixture(scope="module")
def origin():
    files = {"/cat.png": ("image/png", image_bytes((120, 80))), "/clip.mp4": ("video/mp4", video_bytes())}
    with MediaOrigin(files) as running:
        yield running


def logged(server, completion_id: str) -> dict:
    """The request log row of a completion (its id is the request id). The server writes it once it has
    closed the response, which can be a moment after the client read the last byte."""
    request_id = completion_id.removeprefix("chatcmpl-").replace("-", "")
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(server.database) as connection:
            connection.row_factory = sqlite3.Row
            row = connection.execute("SELECT * FROM inference_requestlog WHERE id = ?", (request_id,)).fetchone()
        if row is not None:
            return dict(row)
        assert time.monotonic() < deadline, f"no request log row for {completion_id}"
        time.sleep(0.05)


def ask(oai, content="Say something.", **options):
    return oai.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": content}],
        **{"max_tokens": 8, "temperature": 0, **options},
    )


def test_models_lists_the_served_model(oai):
    models = oai.models.list()
    assert [model.id for model in models.data] == [SERVED_NAME]
    card = models.data[0]
    assert card.object == "model" and card.owned_by == "vlm-server" and card.created > 0
    assert card.model_extra["max_model_len"] == 128000
    assert oai.models.retrieve(SERVED_NAME).id == SERVED_NAME
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


def test_plain_completion(oai, server, tiny_model_path):
    completion = ask(oai, "What is the capital of France?")
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", completion.id)
    assert (completion.object, completion.model) == ("chat.completion", SERVED_NAME)
    assert completion.created > 1_700_000_000
    [choice] = completion.choices
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "length")
    assert isinstance(choice.message.content, str) and choice.message.content
    usage = completion.usage
    assert usage.completion_tokens == 8 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    row = logged(server, completion.id)
    assert (row["endpoint"], row["method"], row["status_code"], row["model"]) == (
        CHAT,
        "POST",
        200,
        SERVED_NAME,  # the name clients asked for, as in the metrics' model_name label
    )
    assert (row["input_tokens"], row["output_tokens"], row["finish_reason"]) == (usage.prompt_tokens, 8, "length")
    assert (row["max_new_tokens"], row["temperature"], row["prompt_preview"]) == (
        8,
        0.0,
        "What is the capital of France?",
    )
    assert row["api_key"] == "openai-tests"
    metrics = requests.get(f"{server.base}/metrics", timeout=10).text
    assert f'vlm_requests_total{{endpoint="{CHAT}",status="200"}}' in metrics


def test_streamed_completion_with_usage(oai, server):
    plain = ask(oai, "Count to ten.", max_tokens=16)
    chunks = list(ask(oai, "Count to ten.", max_tokens=16, stream=True, stream_options={"include_usage": True}))
    first, *middle, finish, usage_chunk = chunks
    assert all(chunk.object == "chat.completion.chunk" and chunk.id == first.id for chunk in chunks)
    assert first.choices[0].delta.role == "assistant" and first.choices[0].finish_reason is None
    assert len(middle) > 1 and all(chunk.choices[0].finish_reason is None for chunk in middle)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in [first, *middle])
    assert text == plain.choices[0].message.content
    assert finish.choices[0].finish_reason == "length" and finish.choices[0].delta.content is None
    assert usage_chunk.choices == [] and usage_chunk.usage.completion_tokens == 16
    assert usage_chunk.usage.prompt_tokens == plain.usage.prompt_tokens
    assert all(chunk.usage is None for chunk in chunks[:-1])
    row = logged(server, first.id)
    assert (row["status_code"], row["output_tokens"], row["finish_reason"]) == (200, 16, "length")


def test_stream_ends_with_done_on_the_wire(server, auth):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}
    with requests.post(f"{server.base}{CHAT}", json=body, headers=auth, stream=True, timeout=60) as reply:
        assert reply.headers["Content-Type"] == "text/event-stream; charset=utf-8"
        events = [line for line in reply.iter_lines() if line]
    assert events[-1] == b"data: [DONE]"
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    assert "usage" not in json.loads(events[0][6:])  # only with stream_options.include_usage


def test_image_by_data_uri_and_by_url_and_a_video_by_url(oai, server, origin):
    parts = [
        {"type": "image_url", "image_url": {"url": data_uri(image_bytes((64, 48)))}},
        {"type": "image_url", "image_url": {"url": origin.url("/cat.png"), "detail": "low"}},
        {"type": "video_url", "video_url": {"url": origin.url("/clip.mp4")}},
        {"type": "text", "text": "Compare the pictures and the clip."},
    ]
    completion = ask(oai, parts)
    assert completion.choices[0].finish_reason == "length"
    row = logged(server, completion.id)
    assert (row["num_images"], row["num_videos"], row["status_code"]) == (2, 1, 200)
    media = json.loads(row["media"])
    assert [(item["kind"], item["source"], item["size"]) for item in media] == [
        ("image", "data", [64, 48]),
        ("image", "url", [120, 80]),
        ("video", "url", [32, 32]),
    ]
    assert row["prompt_preview"] == "Compare the pictures and the clip."
    assert completion.usage.prompt_tokens > row["visual_tokens"] > 0


def test_multi_turn_conversation(oai, server):
    messages = [
        {"role": "system", "content": "You are terse."},
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": data_uri(image_bytes())}},
                {"type": "text", "text": "What is this?"},
            ],
        },
    ]
    first = oai.chat.completions.create(model=SERVED_NAME, messages=messages, max_tokens=5, temperature=0)
    messages += [
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "And its colour?"},
    ]
    second = oai.chat.completions.create(model=SERVED_NAME, messages=messages, max_completion_tokens=6)
    assert second.usage.completion_tokens == 6
    assert second.usage.prompt_tokens > first.usage.prompt_tokens + first.usage.completion_tokens
    row = logged(server, second.id)
    assert (row["num_messages"], row["num_images"], row["prompt_preview"]) == (4, 1, "And its colour?")


def test_seed_makes_sampling_repeatable(oai):
    options = {"temperature": 1.0, "top_p": 1.0, "max_tokens": 12}
    first = ask(oai, "Invent a word.", seed=1234, **options).choices[0].message.content
    again = ask(oai, "Invent a word.", seed=1234, **options).choices[0].message.content
    other = ask(oai, "Invent a word.", seed=4321, **options).choices[0].message.content
    assert first == again
    assert other != first


def test_stop_strings_end_the_answer_before_them(oai):
    options = {"temperature": 1.0, "top_p": 1.0, "seed": 7, "max_tokens": 40}
    full = ask(oai, "Write a line.", **options).choices[0].message.content
    # A word from the middle of the answer; the answer must end just before its first occurrence.
    stop = next(word for word in full[12:].split() if len(word) >= 4 and word.isascii() and word.isalnum())
    expected = full[: full.index(stop)]
    stopped = ask(oai, "Write a line.", stop=[stop, "never-appears"], **options)
    assert stopped.choices[0].message.content == expected
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.usage.completion_tokens < 40
    streamed = list(ask(oai, "Write a line.", stop=stop, stream=True, **options))
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize(
    ("options", "error", "param", "code"),
    [
        ({"n": 2}, openai.BadRequestError, "n", "validation"),
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "model_not_found"),
        ({"max_tokens": 10**6}, openai.BadRequestError, "max_tokens", "validation"),
        ({"temperature": 3}, openai.BadRequestError, "temperature", "validation"),
        ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop", "validation"),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "validation"),
        ({"stream_options": {"include_usage": True}}, openai.BadRequestError, "stream_options", "validation"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,x"}}]}]},
            openai.BadRequestError,
            "messages[0].content[0].image_url",
            "media",
        ),
        ({"messages": [{"role": "tool", "content": "x"}]}, openai.BadRequestError, "messages[0].role", "validation"),
    ],
)
def test_errors_come_in_openai_shape(oai, server, options, error, param, code):
    request = {"model": SERVED_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, **options}
    with pytest.raises(error) as raised:
        oai.chat.completions.create(**request)
    body = raised.value.body
    assert set(body) == {"message", "type", "param", "code"}
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", param, code)
    assert body["message"]
    if param.startswith("messages[0].content"):
        assert body["message"].startswith(f"{param}: ")
    row = logged(server, raised.value.response.headers["X-Request-ID"])
    assert (row["endpoint"], row["status_code"], row["error_reason"]) == (CHAT, raised.value.status_code, code)


def test_malformed_json_and_wrong_method_are_openai_errors_too(server, auth):
    headers = {"Content-Type": "application/json", **auth}
    malformed = requests.post(f"{server.base}{CHAT}", data=b"{not json", headers=headers, timeout=10)
    wrong_method = requests.get(f"{server.base}{CHAT}", headers=auth, timeout=10)
    assert (malformed.status_code, malformed.json()["error"]["type"]) == (400, "invalid_request_error")
    assert (wrong_method.status_code, wrong_method.json()["error"]["code"]) == (405, "method_not_allowed")


def test_keys_are_required_as_for_the_spec_endpoint(server):
    stranger = openai.OpenAI(base_url=f"{server.base}/v1", api_key="ab12cd34.not-a-real-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as raised:
        stranger.chat.completions.create(model=SERVED_NAME, messages=[{"role": "user", "content": "hi"}])
    body = raised.value.body
    assert (body["type"], body["param"], body["code"]) == ("invalid_request_error", None, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError):
        stranger.models.list()
    row = logged(server, raised.value.response.headers["X-Request-ID"])
    assert (row["endpoint"], row["status_code"], row["error_reason"]) == (CHAT, 401, "unauthorized")
    # No key at all (the official client always sends one).
    keyless = requests.post(f"{server.base}{CHAT}", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert keyless.status_code == 401
    assert keyless.json()["error"]["code"] == "invalid_api_key"
    assert keyless.headers["WWW-Authenticate"].startswith("Bearer")


# --- faults, injected in-process ------------------------------------------------------------------


def test_a_failure_mid_stream_is_an_error_chunk_then_done(api, monkeypatch):
    fail_generation_after(monkeypatch, 5)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 50, "temperature": 0, "stream": True}
    response = api.post(CHAT, body)
    assert response.status_code == 200
    events = [block for block in b"".join(response.streaming_content).decode().split("\n\n") if block]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error == {
        "error": {"message": "Internal server error.", "type": "server_error", "param": None, "code": "internal"}
    }
    assert json.loads(events[0].removeprefix("data: "))["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    row = RequestLog.objects.get(id=response["X-Request-ID"])
    assert (row.endpoint, row.status_code, row.error_reason) == (CHAT, 500, "internal")


def test_server_errors_keep_their_status_codes(api, monkeypatch):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True}
    monkeypatch.setattr(runtime.engine, "max_queue", 0)
    overloaded = api.post(CHAT, body)
    monkeypatch.setattr(runtime, "state", "loading")
    loading = api.post(CHAT, body)
    assert (overloaded.status_code, overloaded["Retry-After"]) == (503, "1")
    assert overloaded.json()["error"]["type"] == "server_error" and overloaded.json()["error"]["code"] == "overloaded"
    assert (loading.status_code, loading.json()["error"]["code"]) == (503, "not_loaded")
    assert "Model is not loaded" in loading.json()["error"]["message"]
