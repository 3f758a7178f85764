"""Metrics across gunicorn workers, read by a real Prometheus server.

One gunicorn with two workers (prometheus_client's multiprocess mode, a token and an address allowlist
on /metrics) and one Prometheus on loopback scraping it every second with the rules of
monitoring/prometheus loaded. The test that kills a worker runs last: its replacement reloads the model.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from .samples import data_uri, image_bytes
from .servers import ROOT, free_port, gunicorn

TOKEN = "scrape-secret"
MAX_QUEUE = 16
RULES = ROOT / "monitoring" / "prometheus" / "vlm-rules.yml"
DASHBOARD = ROOT / "monitoring" / "grafana" / "vlm-dashboard.json"
GENERATE = "/api/v1/generate"


def text_request(index: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Question {index}"}], "max_new_tokens": 3}


def image_request() -> dict:
    content = [{"type": "image", "image": data_uri(image_bytes((56, 56)))}, {"type": "text", "text": "?"}]
    return {"messages": [{"role": "user", "content": content}], "max_new_tokens": 3}


def eventually(probe, timeout: float = 60.0, what: str = ""):
    """Poll `probe` until it returns something truthy; fail with `what` and its last answer otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        answer = probe()
        if answer or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert answer, f"gave up waiting for {what}: last answer {answer!r}"
    return answer


class Scrape:
    """One /metrics exposition, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels`."""
        matching = [s.value for s in self.samples if s.name == name and labels.items() <= s.labels.items()]
        return sum(matching)


def scrape(base: str) -> Scrape:
    response = requests.get(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert response.status_code == 200, response.text
    return Scrape(response.text)


def workers(server) -> list[int]:
    return sorted(child.pid for child in psutil.Process(server.process.pid).children())


def tokens_by_worker(metrics_dir: Path) -> dict[int, float]:
    """vlm_generation_tokens_total in each worker's own file, by pid."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        samples = [s for family in MultiProcessCollector.merge([str(path)]) for s in family.samples]
        counts[int(path.stem.split("_")[1])] = sum(s.value for s in samples if s.name == "vlm_generation_tokens_total")
    return counts


def all_workers_serve(server, metrics_dir: Path, count: int = 2) -> bool:
    """`count` workers, each has written its gauges, and the lowest vlm_model_loaded of them is 1."""
    pids = workers(server)
    if len(pids) != count or not all((metrics_dir / f"gauge_livemin_{pid}.db").exists() for pid in pids):
        return False
    return scrape(server.base).value("vlm_model_loaded") == 1


@pytest.fixture(scope="module")
def metrics_dir(tmp_path_factory) -> Path:
    """The multiprocess directory, holding a stale file from an "earlier run" that must not count."""
    directory = tmp_path_factory.mktemp("prometheus-multiproc")
    stale = MmapedDict(str(directory / "counter_1.db"))
    key = mmap_key("vlm_generation_tokens", "vlm_generation_tokens_total", ["model_name"], ["old"], "Tokens generated.")
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    return directory


@pytest.fixture(scope="module")
def server(tiny_model_path, tmp_path_factory, metrics_dir):
    settings = {
        "VLM_WORKERS": "2",
        "VLM_THREADS": "8",
        "VLM_MAX_QUEUE": str(MAX_QUEUE),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "VLM_METRICS_TOKEN": TOKEN,
        "VLM_METRICS_ALLOWED_IPS": "127.0.0.1,::1",
    }
    with gunicorn(tmp_path_factory.mktemp("gunicorn-2"), model=str(tiny_model_path), **settings) as running:
        eventually(lambda: all_workers_serve(running, metrics_dir), timeout=120, what="both workers to load")
        yield running


@pytest.fixture(scope="module")
def prometheus(server, tmp_path_factory):
    """A real Prometheus scraping `server` every second with the token, the project's rules loaded."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is missing: `make prometheus-tools` installs Debian's prometheus package")
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {
                "job_name": "vlm",
                "authorization": {"type": "Bearer", "credentials": TOKEN},
                "static_configs": [{"targets": [f"127.0.0.1:{server.port}"]}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with (workdir / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def ready() -> bool:
            assert process.poll() is None, (workdir / "prometheus.log").read_text()
            try:
                return requests.get(f"{base}/-/ready", timeout=2).status_code == 200
            except requests.ConnectionError:
                return False

        eventually(ready, timeout=60, what="Prometheus to start")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def query(prometheus: str, expr: str) -> list[dict]:
    body = requests.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def scalar(prometheus: str, expr: str) -> float | None:
    result = query(prometheus, expr)
    return float(result[0]["value"][1]) if result else None


def post_all(base: str, bodies: list[dict]) -> list[requests.Response]:
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda body: requests.post(f"{base}{GENERATE}", json=body, timeout=120), bodies))


def test_two_workers_add_up_to_the_requests_sent(server, metrics_dir):
    tokens = successes = images = 0
    for _ in range(6):  # until both workers have served some (the kernel picks who accepts)
        responses = post_all(server.base, [text_request(index) for index in range(6)] + [image_request()] * 2)
        assert [response.status_code for response in responses] == [200] * 8
        tokens += sum(response.json()["usage"]["output_tokens"] for response in responses)
        successes += len(responses)
        images += 2
        by_worker = tokens_by_worker(metrics_dir)
        if sum(count > 0 for count in by_worker.values()) >= 2:
            break
    assert sum(count > 0 for count in by_worker.values()) == 2, by_worker
    assert 1 not in by_worker  # the stale file was removed at start

    # A request is counted once its response has gone out (with its log row): wait for the last ones.
    def all_counted() -> dict[int, float] | None:
        counts = tokens_by_worker(metrics_dir)
        return counts if sum(counts.values()) == tokens else None

    by_worker = eventually(all_counted, timeout=10, what=f"{tokens} tokens counted in the workers' files")

    exported = scrape(server.base)
    assert exported.value("vlm_generation_tokens_total") == sum(by_worker.values()) == tokens
    assert exported.value("vlm_request_success_total") == successes
    assert exported.value("vlm_e2e_request_latency_seconds_count") == successes
    assert exported.value("vlm_requests_total", endpoint=GENERATE, status="200") == successes
    assert exported.value("vlm_request_image_pixels_count") == images
    # Gauges combine as declared: each worker's queue capacity adds up, the model is loaded everywhere.
    assert exported.value("vlm_queue_capacity") == 2 * MAX_QUEUE
    assert exported.value("vlm_model_loaded") == 1
    assert exported.value("vlm_vram_allocated_bytes") > 0
    assert not [s for s in exported.samples if "pid" in s.labels]
    checked = subprocess.run(["promtool", "check", "metrics"], input=exported.text, capture_output=True, text=True)
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_metrics_over_http_need_the_token(server):
    url = f"{server.base}/metrics"
    refused = requests.get(url, timeout=10)
    assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).status_code == 200


def test_a_real_prometheus_sees_the_requests(server, prometheus):
    target = eventually(
        lambda: [t for t in requests.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
                 if t["health"] == "up"],
        what="the scrape target to be up",
    )  # fmt: skip
    assert target[0]["lastError"] == ""
    responses = post_all(server.base, [text_request(index) for index in range(4)] + [image_request()] * 2)
    assert [response.status_code for response in responses] == [200] * 6
    bad_requests = post_all(server.base, [{"messages": []}, {"messages": [{"role": "user", "content": [
        {"type": "image", "image": "data:image/png;base64,AAAA"}]}]}])  # fmt: skip
    assert [response.status_code for response in bad_requests] == [400, 400]
    expected = scrape(server.base)

    tokens = expected.value("vlm_generation_tokens_total")
    eventually(lambda: scalar(prometheus, 'sum(vlm_generation_tokens_total{job="vlm"})') == tokens, what="tokens")
    count = expected.value("vlm_e2e_request_latency_seconds_count")
    eventually(
        lambda: scalar(prometheus, 'sum(vlm_e2e_request_latency_seconds_count{job="vlm"})') == count,
        what="the latency histogram's count",
    )
    p95 = scalar(
        prometheus,
        'histogram_quantile(0.95, sum by (le) (rate(vlm_e2e_request_latency_seconds_bucket{job="vlm"}[1m])))',
    )
    assert p95 is not None and 0 < p95 < 60
    # The recording rules evaluate (every rule healthy), and the latency one has data.
    eventually(
        lambda: scalar(prometheus, 'model_name:vlm_e2e_request_latency_seconds:quantile5m{quantile="0.95"}'),
        what="the recorded p95",
    )
    groups = requests.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {rule["health"] for group in groups for rule in group["rules"]} == {"ok"}
    # Every dashboard query is valid PromQL and finds data for this traffic.
    panels = [panel for panel in json.loads(DASHBOARD.read_text())["panels"] if panel.get("targets")]

    def empty_panels() -> list[str]:
        return [
            panel["title"]
            for panel in panels
            if not any(query(prometheus, grafana(t["expr"])) for t in panel["targets"])
        ]

    deadline = time.monotonic() + 30
    while (empty := empty_panels()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert empty == []


def grafana(expr: str) -> str:
    """A dashboard query as Grafana sends it with every model and instance selected."""
    return expr.replace("$model_name", ".*").replace("$instance", ".*").replace("$__rate_interval", "1m")


def test_the_metrics_directory_is_emptied_at_start_and_a_private_one_removed_at_exit(tmp_path):
    """gunicorn.conf.py's hooks, run as gunicorn runs them (in a clean interpreter, like the master)."""
    script = """
import os, runpy, sys
from pathlib import Path
operator_dir = Path(sys.argv[1])
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(operator_dir)
hooks = runpy.run_path("gunicorn.conf.py")
hooks["on_starting"](None)
hooks["on_exit"](None)
print(sorted(path.name for path in operator_dir.iterdir()))
del os.environ["PROMETHEUS_MULTIPROC_DIR"]
hooks = runpy.run_path("gunicorn.conf.py")
private = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
print(private.is_dir(), os.stat(private).st_mode & 0o777 == 0o700)
hooks["on_exit"](None)
print(private.exists())
"""
    (tmp_path / "counter_123.db").write_bytes(b"stale")
    (tmp_path / "gauge_livesum_123.db").write_bytes(b"stale")
    (tmp_path / "notes.txt").write_text("the operator's")
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    ran = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    )
    assert ran.stdout.splitlines() == ["['notes.txt']", "True True", "False"]


def test_a_dead_worker_keeps_its_counts_and_leaves_the_gauges(server, metrics_dir):
    before = scrape(server.base)
    victim = workers(server)[0]
    os.kill(victim, signal.SIGKILL)
    # gunicorn's child_exit hook drops the dead worker's live gauges; its counters stay in the totals.
    eventually(lambda: not list(metrics_dir.glob(f"gauge_live*_{victim}.db")), timeout=30, what="live gauges gone")
    assert (metrics_dir / f"counter_{victim}.db").exists()
    eventually(lambda: all_workers_serve(server, metrics_dir), timeout=120, what="the replacement worker to load")
    after = scrape(server.base)
    assert victim not in workers(server)
    assert after.value("vlm_generation_tokens_total") == before.value("vlm_generation_tokens_total") > 0
    assert after.value("vlm_e2e_request_latency_seconds_count") == before.value("vlm_e2e_request_latency_seconds_count")
    # Three workers have written a capacity; only the two alive count.
    assert after.value("vlm_queue_capacity") == 2 * MAX_QUEUE
    assert math.isclose(after.value("vlm_vram_clear_threshold_ratio"), 0.85)
