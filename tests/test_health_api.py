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
