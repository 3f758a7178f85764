"""The real thing: gunicorn serving the tiny model as `make demo` does, talked to over HTTP."""

from __future__ import annotations

import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from .samples import data_uri, image_bytes
from .servers import gunicorn


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn")
    with gunicorn(workdir, model=str(tiny_model_path), VLM_THREADS="16") as running:
        yield running.base, running.database, running.health_states


def test_health_goes_from_loading_to_healthy(server):
    base, _, states = server
    assert states[-1] == "healthy"
    assert "loading" in states  # /health answered while the weights loaded
    body = requests.get(f"{base}/health", timeout=5).json()
    assert body["status"] == "healthy" and body["model_loaded"] is True and body["device"] == "cpu"


def test_concurrent_generations_all_answer_and_are_on_record(server):
    base, database, _ = server
    bodies = [
        {"messages": [{"role": "user", "content": f"Question number {index}"}], "max_new_tokens": 8}
        for index in range(6)
    ] + [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": data_uri(image_bytes())}, {"type": "text", "text": "?"}],
                }
            ],
            "max_new_tokens": 8,
        }
    ] * 2
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda body: requests.post(f"{base}/api/v1/generate", json=body, timeout=60), bodies))
    assert [response.status_code for response in responses] == [200] * 8
    assert all(response.json()["usage"]["output_tokens"] == 8 for response in responses)
    ids = {response.json()["request_id"].replace("-", "") for response in responses}
    # Rows are written once each response has been sent: give the last ones a moment.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with sqlite3.connect(database) as connection:
            stored = {row[0].replace("-", "") for row in connection.execute("SELECT id FROM inference_requestlog")}
        if ids <= stored:
            break
        time.sleep(0.1)
    assert ids <= stored


def test_errors_over_http_and_metrics(server):
    base, _, _ = server
    response = requests.post(f"{base}/api/v1/generate", json={"messages": []}, timeout=10)
    assert response.status_code == 400 and "detail" in response.json()
    assert requests.get(f"{base}/vram_status", timeout=5).json()["device"] == "cpu"
    assert requests.post(f"{base}/clear_vram", timeout=30).status_code == 401  # admin key or staff only
    metrics = requests.get(f"{base}/metrics", timeout=5).text
    assert "vlm_generation_tokens_total" in metrics
    assert 'vlm_requests_total{endpoint="/api/v1/generate",status="400"}' in metrics
    assert "django_http_requests_total_by_method_total" in metrics


def test_a_client_that_disconnects_stops_its_generation_and_is_on_record(server):
    base, database, _ = server
    port = int(base.rsplit(":", 1)[1])
    body = b'{"messages": [{"role": "user", "content": "write forever"}], "max_new_tokens": 4000}'
    request_id = "0b6f7c9e-55aa-4c1e-9d0e-3b1f0c2a9e71"
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /api/v1/generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            + f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        time.sleep(1.0)
    # The model is free again well before 4000 tokens could have been generated.
    started = time.monotonic()
    response = requests.post(
        f"{base}/api/v1/generate",
        json={"messages": [{"role": "user", "content": "hi"}], "max_new_tokens": 2},
        timeout=60,
    )
    assert response.status_code == 200
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 10
    row = None
    while time.monotonic() < deadline and row is None:
        with sqlite3.connect(database) as connection:
            row = connection.execute(
                "SELECT status_code, error_reason FROM inference_requestlog WHERE id = ?",
                (request_id.replace("-", ""),),
            ).fetchone()
        time.sleep(0.1)
    assert row == (499, "cancelled")
