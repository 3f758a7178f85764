"""Shared fixtures: the tiny checkpoint (built once, reused by `make demo`) and the loaded runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.conf import settings

from inference.runtime import runtime
from inference.tiny_model import build_tiny_model, is_tiny_model_built

TINY_MODEL = Path(__file__).resolve().parent.parent / "models" / "tiny-qwen2.5-vl"


@pytest.fixture(scope="session")
def tiny_model_path() -> Path:
    if not is_tiny_model_built(TINY_MODEL):
        build_tiny_model(TINY_MODEL)
    return TINY_MODEL


@pytest.fixture(autouse=True, scope="session")
def request_log_written_inline():
    """Tests through Django's test client read a request's row right after its response: written inline. Servers
    the tests start (gunicorn) keep the default, the background writer."""
    settings.VLM_REQUEST_LOG_WRITER = "inline"


@pytest.fixture(scope="session")
def loaded_model(tiny_model_path):
    """The process-wide runtime serving the tiny model through the real loading path (once per session)."""
    settings.VLM_MODEL = str(tiny_model_path)
    settings.VLM_DEVICE = "cpu"
    runtime.load()
    assert runtime.state == "healthy", runtime.error
    yield runtime
    runtime.unload()


@pytest.fixture
def api(client, loaded_model, db):
    """Django's test client against the loaded model, with JSON helpers."""

    class Api:
        def post(self, path: str, body: dict, **headers):
            return client.post(path, body, content_type="application/json", headers=headers)

        def get(self, path: str, **headers):
            return client.get(path, headers=headers)

    return Api()


@pytest.fixture
def admin_key(db) -> str:
    """A new admin API key (POST /clear_vram needs one), to send as `Authorization: Bearer <key>`."""
    from apikeys.models import APIKey

    return APIKey.objects.create_key(name="test admin", is_admin=True)[1]


@pytest.fixture
def metrics_delta(loaded_model):
    """`track(name, **labels)` returns a function giving how much that sample moved since the call.
    `model_name` is filled in unless given (pass model_name=None for metrics without it)."""
    from prometheus_client import REGISTRY

    def track(name: str, **labels):
        labels = {"model_name": loaded_model.model_name, **labels}
        labels = {key: value for key, value in labels.items() if value is not None}
        start = REGISTRY.get_sample_value(name, labels) or 0.0
        return lambda: (REGISTRY.get_sample_value(name, labels) or 0.0) - start

    return track
