"""POST /api/v1/generate through the real pipeline on the tiny model: every content form, every error."""

from __future__ import annotations

import pytest

from inference.models import RequestLog
from inference.runtime import runtime

from .media_origin import MediaOrigin
from .samples import data_uri, image_bytes, video_bytes

GENERATE = "/api/v1/generate"


def user(content) -> dict:
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": 4}


def assert_spec_shape(body: dict, output_tokens: int = 4) -> None:
    assert isinstance(body["response"], str)
    usage = body["usage"]
    assert usage["output_tokens"] == output_tokens
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens"] > 0
    assert body["processing_time"] > 0
    assert body["finish_reason"] == "length"  # random weights never sample EOS


def test_plain_string_content(api, metrics_delta):
    tokens = metrics_delta("vlm_generation_tokens_total")
    prompt = metrics_delta("vlm_prompt_tokens_total")
    latency = metrics_delta("vlm_e2e_request_latency_seconds_count")
    requests = metrics_delta("vlm_requests_total", model_name=None, endpoint=GENERATE, status="200")
    response = api.post(GENERATE, user("What is the capital of France?"))
    assert response.status_code == 200, response.content
    body = response.json()
    assert_spec_shape(body)
    assert response.headers["X-Request-ID"] == body["request_id"]
    row = RequestLog.objects.get(id=body["request_id"])
    assert (row.endpoint, row.method, row.status_code) == (GENERATE, "POST", 200)
    assert (row.input_tokens, row.output_tokens, row.total_tokens) == (
        body["usage"]["input_tokens"],
        4,
        body["usage"]["total_tokens"],
    )
    assert row.prompt_preview == "What is the capital of France?"
    assert (row.num_messages, row.num_images, row.num_videos) == (1, 0, 0)
    assert row.model == runtime.model_name
    assert (row.max_new_tokens, row.temperature, row.top_p) == (4, 0.7, 0.9)
    assert row.finish_reason == "length"
    assert row.total_ms > 0 and row.ttft_ms > 0 and row.queue_ms >= 0 and row.decode_ms >= 0
    assert (tokens(), prompt(), latency(), requests()) == (4, body["usage"]["input_tokens"], 1, 1)


def test_text_item_and_defaults_from_settings(api, settings):
    settings.VLM_MAX_NEW_TOKENS = 3
    response = api.post(GENERATE, {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]})
    assert response.status_code == 200, response.content
    assert_spec_shape(response.json(), output_tokens=3)
    row = RequestLog.objects.get()
    assert (row.max_new_tokens, row.temperature, row.top_p) == (3, 0.7, 0.9)


def test_multi_turn_with_system_and_assistant_turns(api):
    body = {
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hello, can you help me analyze some images?"},
            {"role": "assistant", "content": "Of course! Please share them."},
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": data_uri(image_bytes())},
                    {"type": "text", "text": "What is it?"},
                ],
            },
        ],
        "max_new_tokens": 5,
        "temperature": 0.0,
    }
    response = api.post(GENERATE, body)
    assert response.status_code == 200, response.content
    assert_spec_shape(response.json(), output_tokens=5)
    row = RequestLog.objects.get()
    assert (row.num_messages, row.num_images, row.prompt_preview) == (4, 1, "What is it?")


def test_greedy_is_deterministic_over_http(api):
    body = {**user("Repeat after me"), "temperature": 0, "max_new_tokens": 6}
    first, second = api.post(GENERATE, body).json(), api.post(GENERATE, body).json()
    assert first["response"] == second["response"]


def test_data_uri_image_is_recorded_by_hash_never_by_bytes(api):
    raw = image_bytes((120, 90))
    response = api.post(
        GENERATE, user([{"type": "image", "image": data_uri(raw)}, {"type": "text", "text": "Describe"}])
    )
    assert response.status_code == 200, response.content
    row = RequestLog.objects.get()
    import hashlib

    assert row.num_images == 1
    assert row.media[0]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert row.media[0]["source"] == "data"
    assert row.media[0]["size"] == [120, 90]
    assert row.visual_tokens > 0
    assert "base64" not in str(row.__dict__)


@pytest.fixture
def origin(settings):
    """A real HTTP origin on loopback, which the server may reach only with private URLs allowed."""
    settings.VLM_ALLOW_PRIVATE_MEDIA_URLS = True
    files = {"/chart.png": ("image/png", image_bytes((200, 150))), "/clip.mp4": ("video/mp4", video_bytes())}
    with MediaOrigin(files) as running:
        yield running


def test_image_url(api, origin):
    body = user([{"type": "image", "image": origin.url("/chart.png")}, {"type": "text", "text": "Explain this chart"}])
    response = api.post(GENERATE, body)
    assert response.status_code == 200, response.content
    assert_spec_shape(response.json())
    row = RequestLog.objects.get()
    assert (row.num_images, row.media[0]["source"], row.media[0]["size"]) == (1, "url", [200, 150])


def test_video_url_and_file(api, origin, settings, tmp_path):
    settings.VLM_ALLOWED_MEDIA_ROOT = str(tmp_path)
    (tmp_path / "clip.mp4").write_bytes(video_bytes())
    for source in (origin.url("/clip.mp4"), str(tmp_path / "clip.mp4")):
        response = api.post(
            GENERATE, user([{"type": "video", "video": source}, {"type": "text", "text": "What happens?"}])
        )
        assert response.status_code == 200, response.content
        assert_spec_shape(response.json())
    rows = RequestLog.objects.order_by("received_at")
    assert [row.media[0]["source"] for row in rows] == ["url", "file"]
    # 3 s at the default 2 fps: 6 frames, and the visual tokens are counted.
    assert all(row.num_videos == 1 and row.media[0]["frames"] == 6 and row.visual_tokens > 0 for row in rows)


def test_loopback_urls_are_refused_by_default(api, settings):
    settings.VLM_ALLOW_PRIVATE_MEDIA_URLS = False
    files = {"/chart.png": ("image/png", image_bytes())}
    with MediaOrigin(files) as origin:
        response = api.post(GENERATE, user([{"type": "image", "image": origin.url("/chart.png")}]))
        assert origin.requests == []  # refused before connecting
    assert response.status_code == 400
    assert response.json()["detail"].startswith("messages[0].content[0].image: ")
    assert "127.0.0.1" not in response.json()["detail"]


def test_image_file_under_the_allowed_root(api, settings, tmp_path):
    settings.VLM_ALLOWED_MEDIA_ROOT = str(tmp_path)
    (tmp_path / "cat.png").write_bytes(image_bytes())
    for source in (str(tmp_path / "cat.png"), f"file://{tmp_path / 'cat.png'}"):
        response = api.post(GENERATE, user([{"type": "image", "image": source}, {"type": "text", "text": "?"}]))
        assert response.status_code == 200, response.content
    assert RequestLog.objects.filter(status_code=200, num_images=1).count() == 2


@pytest.mark.parametrize("root", [None, "elsewhere"])
def test_file_paths_are_refused_without_or_outside_the_root(api, settings, tmp_path, root):
    (tmp_path / "secret.png").write_bytes(image_bytes())
    if root:
        (tmp_path / root).mkdir()
        settings.VLM_ALLOWED_MEDIA_ROOT = str(tmp_path / root)
    else:
        settings.VLM_ALLOWED_MEDIA_ROOT = None
    response = api.post(GENERATE, user([{"type": "image", "image": str(tmp_path / "secret.png")}]))
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert detail.startswith("messages[0].content[0].image: ")
    assert str(tmp_path) not in detail  # no paths echoed back
    row = RequestLog.objects.get()
    assert (row.status_code, row.error_reason) == (400, "media")


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({}, "messages: This field is required."),
        ({"messages": []}, "messages: "),
        ({"messages": "hi"}, "messages: "),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role: "),
        ({"messages": [{"role": "user"}]}, "messages[0].content: This field is required."),
        ({"messages": [{"role": "user", "content": 42}]}, "messages[0].content: must be a string or an array"),
        ({"messages": [{"role": "user", "content": []}]}, "messages[0].content: must not be an empty array"),
        ({"messages": [{"role": "user", "content": [{"type": "audio"}]}]}, "messages[0].content[0].type: "),
        ({"messages": [{"role": "user", "content": [{"type": "image"}]}]}, "messages[0].content[0].image: "),
        ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 0}, "max_new_tokens: "),
        ({"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 10**6}, "max_new_tokens: "),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 2.5}, "temperature: "),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature: "),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p: "),
        ({"messages": [{"role": "user", "content": "hi"}], "top_p": 1.5}, "top_p: "),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "messages: the last message"),
    ],
)
def test_invalid_input_is_400_saying_what_and_where(api, body, where):
    response = api.post(GENERATE, body)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(where), response.json()
    assert set(response.json()) == {"detail", "request_id"}
    row = RequestLog.objects.get()
    assert response.json()["request_id"] == response["X-Request-ID"] == str(row.id)
    assert (row.status_code, row.error_reason) == (400, "validation")


def test_bad_data_uri_says_where(api):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "image", "image": "data:image/png;base64,@@@not-base64@@@"}]},
    ]
    response = api.post(GENERATE, {"messages": messages})
    assert response.status_code == 400
    assert response.json()["detail"].startswith("messages[2].content[0].image: ")


def test_malformed_json_and_nan_are_400(api, client):
    response = client.post(GENERATE, "{not json", content_type="application/json")
    assert response.status_code == 400
    assert "detail" in response.json()
    response = client.post(
        GENERATE,
        '{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert RequestLog.objects.filter(status_code=400).count() == 2


def test_too_many_images_refused_before_fetching(api, settings, metrics_delta):
    settings.VLM_MAX_IMAGES_PER_REQUEST = 2
    rejected = metrics_delta("vlm_media_rejected_total", reason="too_many")
    # The URLs point nowhere: they must not even be tried.
    items = [{"type": "image", "image": "http://192.0.2.1/never.png"}] * 3
    response = api.post(GENERATE, user(items))
    assert response.status_code == 400
    assert "at most 2 images" in response.json()["detail"]
    assert rejected() == 1


def test_503_while_the_model_is_not_loaded(api, monkeypatch):
    monkeypatch.setattr(runtime, "state", "loading")
    response = api.post(GENERATE, user("hi"))
    assert response.status_code == 503
    assert response.json() == {
        "detail": "Model is not loaded (state: loading).",
        "request_id": response["X-Request-ID"],
    }
    assert RequestLog.objects.get().status_code == 503


def test_500_hides_the_internals_and_the_server_keeps_serving(api, monkeypatch, metrics_delta):
    failures = metrics_delta("vlm_request_failure_total", reason="internal")

    def broken_prepare(conversation):
        raise RuntimeError("secret internal state /opt/model/weights")

    monkeypatch.setattr(runtime.backend, "prepare", broken_prepare)
    response = api.post(GENERATE, user("hi"))
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "request_id": response["X-Request-ID"]}
    row = RequestLog.objects.get()
    assert row.status_code == 500 and "secret internal state" in row.error_detail
    assert failures() == 1
    monkeypatch.undo()
    assert api.post(GENERATE, user("hi")).status_code == 200


def test_context_overflow_is_refused_before_queueing(api, monkeypatch):
    monkeypatch.setattr(runtime.backend, "context_length", 40)
    response = api.post(GENERATE, {**user("hello " * 30), "max_new_tokens": 8})
    assert response.status_code == 400
    assert "exceeds the model's context" in response.json()["detail"]


def test_oversized_body_is_413(api, settings, client):
    settings.VLM_MAX_BODY_BYTES = 1000
    response = client.post(
        GENERATE, {"messages": [{"role": "user", "content": "x" * 2000}]}, content_type="application/json"
    )
    assert response.status_code == 413
    assert "larger than 1000 bytes" in response.json()["detail"]
    assert response.json()["request_id"] == str(RequestLog.objects.get(status_code=413).id)


def test_unknown_api_path_is_a_json_404_on_record(api):
    response = api.post("/api/v1/nope", {})
    assert response.status_code == 404
    assert response.json() == {"detail": "Not found.", "request_id": response["X-Request-ID"]}
    assert RequestLog.objects.get().status_code == 404


def test_client_request_id_is_kept_when_valid(api):
    request_id = "6f1c1a4e-2b1d-4d8e-9c57-0f0a8a3b2c11"
    response = api.post(GENERATE, user("hi"), **{"X-Request-ID": request_id})
    assert response.json()["request_id"] == request_id
    assert RequestLog.objects.filter(id=request_id).exists()
    response = api.post(GENERATE, user("hi"), **{"X-Request-ID": "not-a-uuid"})
    assert response.json()["request_id"] != "not-a-uuid"


def test_full_queue_is_503_with_retry_after_before_media_is_touched(api, monkeypatch, metrics_delta):
    overloaded = metrics_delta("vlm_request_failure_total", reason="overloaded")
    fetched = []
    monkeypatch.setattr("inference.media.load_image", lambda *args, **kwargs: fetched.append(args))
    monkeypatch.setattr(runtime.engine, "max_queue", 0)
    response = api.post(GENERATE, user([{"type": "image", "image": "http://192.0.2.1/x.png"}]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert "overloaded" in response.json()["detail"]
    assert fetched == []
    assert RequestLog.objects.get().error_reason == "overloaded"
    assert overloaded() == 1


def test_past_the_deadline_is_504_and_the_engine_moves_on(api, settings):
    settings.VLM_REQUEST_TIMEOUT_S = 0.3
    response = api.post(GENERATE, {**user("long answer please"), "max_new_tokens": 3000})
    assert response.status_code == 504
    row = RequestLog.objects.get()
    assert (row.status_code, row.error_reason) == (504, "timeout")
    settings.VLM_REQUEST_TIMEOUT_S = 60
    assert api.post(GENERATE, user("next")).status_code == 200


def test_a_reused_client_request_id_still_gets_its_row(api):
    request_id = "1d3c5e7a-9b2f-4c6d-8e0a-2b4d6f8a0c1e"
    for _ in range(2):
        assert api.post(GENERATE, user("hi"), **{"X-Request-ID": request_id}).status_code == 200
    assert RequestLog.objects.count() == 2
    assert RequestLog.objects.filter(id=request_id).exists()
