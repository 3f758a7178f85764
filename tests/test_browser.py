"""A person's view: headless Chromium signs in to the admin, reads the request history and sees the
dashboard's charts drawn from the requests this test made over HTTP to the live server."""

from __future__ import annotations

import requests
from selenium.webdriver.common.by import By

from .browser import admin_login, chromium_driver, wait_for_js
from .samples import data_uri, image_bytes

GENERATE = "/api/v1/generate"

# Reads the drawn charts back from Chart.js, and counts the canvas pixels that are not blank.
CHARTS_SCRIPT = """
const charts = {};
for (const canvas of document.querySelectorAll("canvas")) {
  const chart = Chart.getChart(canvas);
  const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
  let painted = 0;
  for (let i = 3; i < pixels.length; i += 4) if (pixels[i] > 0) painted++;
  charts[canvas.id] = {
    painted: painted,
    datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data})),
  };
}
return charts;
"""


def made_requests(base_url: str) -> dict[str, int]:
    """Three answers, one refused request, one unknown endpoint: their ids by expected status."""
    text = {"messages": [{"role": "user", "content": "Describe a red square."}], "max_new_tokens": 4}
    image = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": data_uri(image_bytes())}, {"type": "text", "text": "?"}],
            }
        ],
        "max_new_tokens": 4,
    }
    responses = [
        requests.post(base_url + GENERATE, json=text, timeout=60),
        requests.post(base_url + GENERATE, json=text, timeout=60),
        requests.post(base_url + GENERATE, json=image, timeout=60),
        requests.post(base_url + GENERATE, json={"messages": []}, timeout=60),
        requests.get(base_url + "/api/v1/no-such-endpoint", timeout=60),
    ]
    assert [response.status_code for response in responses] == [200, 200, 200, 400, 404]
    return {response.headers["X-Request-ID"]: response.status_code for response in responses}


def test_admin_history_and_dashboard_in_chromium(live_server, loaded_model, django_user_model, tmp_path):
    django_user_model.objects.create_superuser("operator", "operator@example.com", "a-long-test-password")
    ids = made_requests(live_server.url)

    with chromium_driver() as driver:
        admin_login(driver, live_server.url, "operator", "a-long-test-password")

        driver.get(live_server.url + "/admin/inference/requestlog/")
        rows = driver.find_elements(By.CSS_SELECTOR, "#result_list tbody tr")
        assert len(rows) == 5
        table = driver.find_element(By.ID, "result_list").text
        assert table.count(GENERATE) == 4 and "/api/v1/no-such-endpoint" in table
        assert {"200", "400", "404"} <= set(table.split())
        driver.save_screenshot(str(tmp_path / "history.png"))

        # The detail page of one answer shows where its time went.
        answered = next(request_id for request_id, status in ids.items() if status == 200)
        driver.get(f"{live_server.url}/admin/inference/requestlog/{answered}/change/")
        breakdown = driver.find_element(By.CSS_SELECTOR, ".latency-table").text
        assert all(stage in breakdown for stage in ("preprocess", "queue", "prefill", "decode"))

        driver.get(live_server.url + "/admin/dashboard/?window=hour")
        wait_for_js(driver, "return document.body.dataset.dashboardDrawn === 'true'")
        assert driver.find_element(By.ID, "total-requests").text == "5"
        charts = driver.execute_script(CHARTS_SCRIPT)
        driver.save_screenshot(str(tmp_path / "dashboard.png"))

    assert set(charts) == {
        "chart-requests",
        "chart-errors",
        "chart-latency",
        "chart-ttft",
        "chart-speed",
        "chart-tokens",
    }
    for name, chart in charts.items():
        assert chart["painted"] > 1000, f"{name} looks blank"

    def series(chart: str, label: str) -> list:
        return next(d["data"] for d in charts[chart]["datasets"] if d["label"] == label)

    # Rates per minute times the minutes of their bucket give back the requests made (all within the
    # last two buckets, should the test straddle a minute).
    requests_per_status = {d["label"]: d["data"] for d in charts["chart-requests"]["datasets"]}
    assert set(requests_per_status) == {"200", "400", "404"}
    assert sum(1 for value in requests_per_status["200"] if value) in (1, 2)
    assert any(value is not None and value > 0 for value in series("chart-errors", "4xx and 5xx"))
    assert any(value is not None and value > 0 for value in series("chart-latency", "p95"))
    assert any(value is not None and value > 0 for value in series("chart-ttft", "p50"))
    assert any(value is not None and value > 0 for value in series("chart-speed", "per request (mean decode speed)"))
    assert sum(series("chart-tokens", "output")) == 3 * 4
