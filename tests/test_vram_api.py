"""GET /vram_status and POST /clear_vram."""

from __future__ import annotations

import psutil

from inference.models import RequestLog

SPEC_KEYS = {"allocated_gb", "reserved_gb", "free_gb", "total_gb", "usage_percentage"}


def test_vram_status_describes_host_memory_on_a_cpu(api):
    response = api.get("/vram_status")
    assert response.status_code == 200
    body = response.json()
    assert SPEC_KEYS <= body.keys()
    assert body["device"] == "cpu"
    total_gb = psutil.virtual_memory().total / 1024**3
    assert abs(body["total_gb"] - total_gb) < 0.01
    assert 0 < body["allocated_gb"] < body["total_gb"]
    assert 0 < body["free_gb"] <= body["total_gb"]
    assert abs(body["usage_percentage"] - 100 * body["reserved_gb"] / body["total_gb"]) < 0.2


def test_clear_vram_reports_memory_before_and_after(api, metrics_delta, admin_key):
    delta = metrics_delta("vlm_vram_clears_total", trigger="manual")
    response = api.post("/clear_vram", {}, Authorization=f"Bearer {admin_key}")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cleared"
    assert SPEC_KEYS <= body["before"].keys() and SPEC_KEYS <= body["after"].keys()
    assert isinstance(body["freed_gb"], float)
    assert delta() == 1
    row = RequestLog.objects.get(id=body["request_id"])
    assert (row.endpoint, row.method, row.status_code) == ("/clear_vram", "POST", 200)
    assert response.headers["X-Request-ID"] == body["request_id"]


def test_clear_vram_while_the_model_is_not_loaded_is_503(api, monkeypatch, admin_key):
    from inference.runtime import runtime

    monkeypatch.setattr(runtime, "state", "loading")
    response = api.post("/clear_vram", {}, Authorization=f"Bearer {admin_key}")
    assert response.status_code == 503
    assert response.json() == {
        "detail": "Model is not loaded (state: loading).",
        "request_id": response["X-Request-ID"],
    }
    assert RequestLog.objects.get().status_code == 503
