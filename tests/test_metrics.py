"""GET /metrics in one process on the tiny model: access control, every metric moved by real requests,
failure reasons, the engine's gauges; promtool on the exposition, the rules and the sample config; the
Grafana dashboard and the rules against the metrics that exist. (Several workers and a real
Prometheus server: test_prometheus.py.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from prometheus_client import REGISTRY

from inference.engine import Job
from inference.errors import VLMError
from inference.models import RequestLog
from inference.runtime import runtime
from inference.sampling import RowSampling
from monitoring import metrics
from monitoring.checks import check_metrics_settings

from .samples import data_uri, image_bytes

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_DIR = ROOT / "monitoring" / "prometheus"
DASHBOARD = ROOT / "monitoring" / "grafana" / "vlm-dashboard.json"
GENERATE = "/api/v1/generate"
# A metric name in PromQL; not the middle of a recording rule's name (`instance:vlm_queue_fill:ratio`).
METRIC_NAME = re.compile(r"(?<![:\w])(?:vlm|django)_[a-z0-9_]+")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make prometheus-tools` installs Debian's prometheus package")
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=60)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"model_name": runtime.model_name, **labels}) or 0.0


def failure_counts() -> dict[str, float]:
    family = next(family for family in REGISTRY.collect() if family.name == "vlm_request_failure")
    return {s.labels["reason"]: s.value for s in family.samples if s.labels["model_name"] == runtime.model_name}


def image_request(size: tuple[int, int] = (64, 48), max_new_tokens: int = 4) -> dict:
    content = [{"type": "image", "image": data_uri(image_bytes(size))}, {"type": "text", "text": "What is it?"}]
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": max_new_tokens}


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --- the endpoint and who may read it ------------------------------------------------------------


def test_open_by_default_in_prometheus_text_format(api):
    # Scrapers' Accept headers vary; DRF's negotiation would answer some with 406.
    for accept in ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", "text/plain", ""):
        response = api.get("/metrics", Accept=accept)
        assert response.status_code == 200
        assert response["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    body = response.content.decode()
    model = runtime.model_name
    assert f'vlm_model_loaded{{model_name="{model}"}} 1.0' in body
    assert f'vlm_queue_capacity{{model_name="{model}"}} {float(runtime.engine.max_queue)}' in body
    assert f'vlm_vram_clear_threshold_ratio{{model_name="{model}"}} {runtime.engine.vram_threshold}' in body
    # Counters exist from zero once the model serves, before any request.
    assert f'vlm_request_failure_total{{model_name="{model}",reason="throttled"}}' in body
    assert "django_http_requests_total_by_method_total" in body
    assert "_created" not in body
    assert not RequestLog.objects.exists()  # scrapes are not requests to log


@pytest.mark.parametrize(
    "authorization, status",
    [(None, 401), ("Bearer wrong", 401), ("Bearer s3cret-but-longer", 401), ("Basic czNjcmV0", 401),
     ("Bearer s3cret", 200), ("bearer  s3cret", 200)],
)  # fmt: skip
def test_a_configured_token_is_required(api, settings, authorization, status):
    settings.VLM_METRICS_TOKEN = "s3cret"
    response = api.get("/metrics", **({"Authorization": authorization} if authorization else {}))
    assert response.status_code == status
    if status == 401:
        assert response["WWW-Authenticate"] == 'Bearer realm="metrics"'
        assert set(response.json()) == {"detail"}
    else:
        assert b"vlm_model_loaded" in response.content


@pytest.mark.parametrize(
    "address, status",
    [("127.0.0.1", 200), ("10.1.200.3", 200), ("::ffff:10.1.200.3", 200), ("::1", 200),
     ("10.2.0.1", 403), ("::ffff:127.0.0.2", 403), ("fe80::1", 403), ("", 403)],
)  # fmt: skip
def test_only_allowed_addresses_may_scrape(client, loaded_model, db, settings, address, status):
    settings.VLM_METRICS_ALLOWED_IPS = ["127.0.0.1", "10.1.0.0/16", "::1"]
    response = client.get("/metrics", REMOTE_ADDR=address)
    assert response.status_code == status
    if status == 403:
        assert response.json() == {"detail": "Metrics are not served to this address."}


def test_address_and_token_together_need_both(client, loaded_model, db, settings):
    settings.VLM_METRICS_ALLOWED_IPS = ["10.0.0.0/8"]
    settings.VLM_METRICS_TOKEN = "s3cret"
    token = {"Authorization": "Bearer s3cret"}
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.9", headers=token).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.0.0.9").status_code == 401
    assert client.get("/metrics", REMOTE_ADDR="192.0.2.9", headers=token).status_code == 403


def test_a_malformed_allowlist_is_a_system_check_error(settings):
    settings.VLM_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "10.0.0.0/33"]
    assert [error.id for error in check_metrics_settings(None)] == ["monitoring.E001"]
    settings.VLM_METRICS_ALLOWED_IPS = ["10.0.0.0/8", "::1", "192.168.1.7"]
    assert check_metrics_settings(None) == []


# --- what real requests move ---------------------------------------------------------------------


def test_a_generation_with_an_image_moves_every_request_metric(api, metrics_delta):
    histograms = [
        "vlm_e2e_request_latency_seconds", "vlm_time_to_first_token_seconds", "vlm_request_queue_time_seconds",
        "vlm_request_prefill_time_seconds", "vlm_request_decode_time_seconds", "vlm_time_per_output_token_seconds",
        "vlm_preprocess_seconds", "vlm_batch_size",
    ]  # fmt: skip
    counts = {name: metrics_delta(f"{name}_count") for name in histograms}
    prompt_tokens = metrics_delta("vlm_prompt_tokens_total")
    generation_tokens = metrics_delta("vlm_generation_tokens_total")
    success = metrics_delta("vlm_request_success_total", finished_reason="length")
    requests = metrics_delta("vlm_requests_total", model_name=None, endpoint=GENERATE, status="200")
    e2e_seconds = metrics_delta("vlm_e2e_request_latency_seconds_sum")
    prompt_sum = metrics_delta("vlm_request_prompt_tokens_sum")
    generation_sum = metrics_delta("vlm_request_generation_tokens_sum")
    visual_sum = metrics_delta("vlm_request_visual_tokens_sum")
    pixels_sum = metrics_delta("vlm_request_image_pixels_sum")
    fetches = metrics_delta("vlm_media_fetch_seconds_count", kind="image")
    metrics.VRAM_ALLOCATED.labels(runtime.model_name).set(-1)

    response = api.post(GENERATE, image_request(size=(64, 48)))

    assert response.status_code == 200
    # The answer leaves as soon as its row ends; the batch is observed, then memory measured, after it.
    assert wait_for(lambda: sample("vlm_vram_allocated_bytes") > 0)
    body, row = response.json(), RequestLog.objects.get()
    assert {name: delta() for name, delta in counts.items()} == dict.fromkeys(histograms, 1.0)
    assert prompt_tokens() == prompt_sum() == body["usage"]["input_tokens"]
    assert generation_tokens() == generation_sum() == body["usage"]["output_tokens"] == 4
    assert success() == requests() == 1
    assert e2e_seconds() == pytest.approx(body["processing_time"], abs=1e-3)
    assert visual_sum() == row.visual_tokens > 0
    assert pixels_sum() == 64 * 48
    assert fetches() == 1
    # The VRAM gauges are refreshed after every batch (above), not only when /vram_status is called.
    assert sample("vlm_vram_total_bytes") >= sample("vlm_vram_reserved_bytes") > 0


def _oom(monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(runtime.backend, "prefill", out_of_memory)


def _internal(monkeypatch):
    def broken(conversation):
        raise RuntimeError("boom")

    monkeypatch.setattr(runtime.backend, "prepare", broken)


# (reason, HTTP status, request body, fault) for each reason a request can fail with today;
# unauthorized and throttled come from DRF's authentication and throttles once the API has them.
FAILURES = [
    ("validation", 400, {"messages": []}, None),
    ("media", 400, {"messages": [{"role": "user", "content": [{"type": "image", "image": "data:image/png;base64,AAAA"}]}]}, None),
    ("overloaded", 503, image_request(), lambda monkeypatch: monkeypatch.setattr(runtime.engine, "max_queue", 0)),
    ("timeout", 504, image_request(max_new_tokens=3000), lambda monkeypatch: monkeypatch.setattr("django.conf.settings.VLM_REQUEST_TIMEOUT_S", 0.3)),
    ("oom", 503, image_request(), _oom),
    ("internal", 500, image_request(), _internal),
    ("not_loaded", 503, image_request(), lambda monkeypatch: monkeypatch.setattr(runtime, "state", "loading")),
]  # fmt: skip


@pytest.mark.parametrize("reason, status, body, fault", FAILURES, ids=[case[0] for case in FAILURES])
def test_each_failure_is_counted_once_under_its_reason(api, monkeypatch, reason, status, body, fault):
    if fault:
        fault(monkeypatch)
    before = failure_counts()
    response = api.post(GENERATE, body)
    assert response.status_code == status
    after = failure_counts()
    moved = {key: after[key] - before.get(key, 0.0) for key in after if after[key] != before.get(key, 0.0)}
    assert moved == {reason: 1.0}
    assert RequestLog.objects.get().error_reason == reason


def test_every_domain_error_reason_is_counted_from_zero():
    """Each reason errors.py can raise has its series from the start (a new error class must add its own)."""
    classes, reasons = [VLMError], set()
    while classes:
        error_class = classes.pop()
        reasons.add(error_class.reason)
        classes += error_class.__subclasses__()
    assert reasons <= set(metrics.FAILURE_REASONS)


def test_out_of_memory_counts_the_error_and_the_clear(api, monkeypatch, metrics_delta):
    oom, cleared = metrics_delta("vlm_oom_total"), metrics_delta("vlm_vram_clears_total", trigger="oom")
    _oom(monkeypatch)
    assert api.post(GENERATE, image_request()).status_code == 503
    assert (oom(), cleared()) == (1.0, 1.0)


def test_a_clear_above_the_threshold_counts_as_auto(api, monkeypatch, metrics_delta):
    auto, manual = (
        metrics_delta("vlm_vram_clears_total", trigger="auto"),
        metrics_delta("vlm_vram_clears_total", trigger="manual"),
    )
    monkeypatch.setattr(runtime.engine, "vram_threshold", 0.0)
    assert api.post(GENERATE, image_request()).status_code == 200
    # The answer leaves as soon as its row ends; the worker clears after the whole batch.
    assert wait_for(lambda: auto() == 1.0)
    assert manual() == 0.0


def test_rejected_media_counted_by_reason(api, metrics_delta):
    refused = metrics_delta("vlm_media_rejected_total", reason="scheme")
    item = {"type": "image", "image": "ftp://example.com/cat.png"}
    response = api.post(GENERATE, {"messages": [{"role": "user", "content": [item]}]})
    assert response.status_code == 400
    assert refused() == 1


def test_unknown_paths_share_one_series(api, metrics_delta):
    unmatched = metrics_delta("vlm_requests_total", model_name=None, endpoint="unmatched", status="404")
    for probe in ("/api/v1/a1b2c3", "/api/v1/generate/x", "/v1/../etc/passwd"):
        assert api.post(probe, {}).status_code == 404
    assert unmatched() == 3
    exposition = api.get("/metrics").content.decode()
    assert "a1b2c3" not in exposition and "passwd" not in exposition


def test_running_and_waiting_follow_the_engine(loaded_model, monkeypatch):
    """While the first of three jobs generates (batch size 1), one runs and two wait."""
    engine = loaded_model.engine
    monkeypatch.setattr(engine, "max_batch_size", 1)
    row = loaded_model.backend.prepare([{"role": "user", "content": "Count to ten."}])
    generating, others_queued, seen = threading.Event(), threading.Event(), []

    def hold_the_first_token(token: int) -> None:
        if not generating.is_set():
            generating.set()
            others_queued.wait(10)
            seen.append((sample("vlm_num_requests_running"), sample("vlm_num_requests_waiting")))

    def job(on_token=None) -> Job:
        now = time.monotonic()
        return Job(row=row, sampling=RowSampling(temperature=0.0, top_p=1.0), max_new_tokens=3, received_at=now,
                   preprocess_s=0.0, deadline=now + 60, on_token=on_token)  # fmt: skip

    jobs = [engine.submit(job(hold_the_first_token))]
    assert generating.wait(30)
    jobs += [engine.submit(job()), engine.submit(job())]
    others_queued.set()
    assert [job.result().output_tokens for job in jobs] == [3, 3, 3]
    assert seen == [(1.0, 2.0)]
    assert wait_for(lambda: (sample("vlm_num_requests_running"), sample("vlm_num_requests_waiting")) == (0.0, 0.0))


# --- the real tools ------------------------------------------------------------------------------


def test_promtool_accepts_the_exposition_after_traffic(api):
    assert api.post(GENERATE, image_request()).status_code == 200
    assert api.post(GENERATE, {"messages": []}).status_code == 400
    exposition = api.get("/metrics").content.decode()
    checked = promtool("check", "metrics", stdin=exposition)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
    # The same check fails on a lint problem, so a pass above means something.
    broken = promtool("check", "metrics", stdin="# HELP vlm_x X.\n# TYPE vlm_x counter\nvlm_x 1\n")
    assert broken.returncode != 0 and '"_total" suffix' in broken.stdout + broken.stderr


def test_rules_and_sample_config_pass_promtool():
    checked = promtool("check", "rules", str(PROMETHEUS_DIR / "vlm-rules.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # Unit tests of every alert: when it fires, when it must not, and its text.
    tested = promtool("test", "rules", str(PROMETHEUS_DIR / "vlm-rules.test.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    configured = promtool("check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert configured.returncode == 0, configured.stdout + configured.stderr


def exported_names() -> set[str]:
    """Every series name the server can export (counters with _total, histograms with their parts)."""
    names = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_dashboard_has_the_operators_panels_on_real_metrics(loaded_model):
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    titles = {panel["title"] for panel in panels}
    for wanted in ("Requests / s", "Tokens / s", "End-to-end latency", "Time to first token", "Requests in the engine",
                   "Batch size", "VRAM", "Failures by reason"):  # fmt: skip
        assert wanted in titles
    assert len({panel["id"] for panel in dashboard["panels"]}) == len(dashboard["panels"])
    assert all(panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for panel in panels)
    assert all(panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24 for panel in dashboard["panels"])
    referenced = {name for expr in dashboard_queries() for name in METRIC_NAME.findall(expr)}
    assert referenced - exported_names() == set()
    assert {"vlm_vram_reserved_bytes", "vlm_time_to_first_token_seconds_bucket", "vlm_batch_size_bucket"} <= referenced


def test_rules_only_use_real_metrics(loaded_model):
    referenced = set(METRIC_NAME.findall((PROMETHEUS_DIR / "vlm-rules.yml").read_text()))
    assert referenced - exported_names() == set()
    assert "vlm_model_loaded" in referenced and "vlm_queue_capacity" in referenced
