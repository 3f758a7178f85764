"""GET /health: the spec's shape in every loading state, answered at once."""

from __future__ import annotations

import pytest

from inference.runtime import runtime


@pytest.fixture
def runtime_state(monkeypatch):
    def set_state(state: str, error: str = "") -> None:
        monkeypatch.setattr(runtime, "state", state)
        monkeypatch.setattr(runtime, "error", error)

    return set_state


def test_healthy_when_the_model_serves(api):
    response = api.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body == {"status": "healthy", "model_loaded": True, "device": "cpu", "model": runtime.model_name}


def test_loading_answers_503_with_the_same_shape(client, runtime_state):
    runtime_state("loading")
    response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "loading"
    assert response.json()["model_loaded"] is False
    assert "device" in response.json()


def test_load_failure_is_reported_with_its_reason(client, runtime_state):
    runtime_state("error", "OSError: no such model folder")
    response = client.get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "error"
    assert body["model_loaded"] is False
    assert body["error"] == "OSError: no such model folder"


def test_health_is_not_in_the_request_log(api):
    from inference.models import RequestLog

    api.get("/health")
    assert RequestLog.objects.count() == 0


def test_a_real_load_failure_gives_its_reason_without_the_servers_paths(client, settings, tmp_path, monkeypatch):
    """/health is open to anyone: the reason is there, the server's file layout is not (the log has it)."""
    from inference.runtime import ModelRuntime

    folder = tmp_path / "weights-here"
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    settings.VLM_MODEL = str(folder)
    failed = ModelRuntime()
    failed.load()
    assert failed.state == "error"
    monkeypatch.setattr("inference.views.runtime", failed)
    body = client.get("/health").json()
    assert body["status"] == "error" and body["error"]
    assert str(tmp_path) not in body["error"] and "weights-here" not in body["error"], body
    assert body["error"].split(":")[0].isidentifier()  # the exception's name leads the reason


def test_an_engine_whose_worker_stopped_is_an_error_and_refuses_requests(api, monkeypatch):
    from inference.engine import Engine

    monkeypatch.setattr(Engine, "is_alive", property(lambda engine: False))
    health = api.get("/health")
    assert health.status_code == 503
    assert health.json()["status"] == "error" and "worker thread stopped" in health.json()["error"]
    refused = api.post("/api/v1/generate", {"messages": [{"role": "user", "content": "hi"}]})
    assert refused.status_code == 503 and refused.json()["detail"] == "Model is not loaded (state: error)."
    monkeypatch.undo()
    assert api.get("/health").status_code == 200
