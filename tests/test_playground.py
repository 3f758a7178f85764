"""The playground at `/`, as a person uses it: headless Chromium uploads an image, asks a question, watches
the answer stream in from /v1/chat/completions on the live server, and goes on with the conversation."""

from __future__ import annotations

import io

from django.core.management import call_command
from selenium.webdriver.common.by import By

from inference.models import RequestLog

from .browser import chromium_driver, wait_for_js
from .samples import image_bytes

CHAT = "/v1/chat/completions"


def assistant_answers(driver) -> list[dict]:
    return driver.execute_script(
        """return [...document.querySelectorAll('.message.assistant')].map(bubble => ({
            text: bubble.querySelector('.text').textContent,
            meta: (bubble.querySelector('.meta') || {}).textContent || '',
            error: bubble.classList.contains('error'),
        }));"""
    )


def ask(driver, question: str, answers_before: int, timeout: float = 60) -> dict:
    driver.find_element(By.ID, "question").send_keys(question)
    driver.find_element(By.ID, "send").click()
    wait_for_js(
        driver,
        f"return document.body.dataset.state === 'idle'"
        f" && document.querySelectorAll('.message.assistant').length === {answers_before + 1}",
        timeout=timeout,
    )
    return assistant_answers(driver)[-1]


def test_upload_an_image_ask_and_watch_the_answer_stream_in(live_server, loaded_model, tmp_path, settings):
    settings.VLM_REQUIRE_API_KEY = True
    printed = io.StringIO()
    call_command("create_api_key", "playground-test", stdout=printed, stderr=io.StringIO())
    key = printed.getvalue().strip()
    picture = tmp_path / "red-square.png"
    picture.write_bytes(image_bytes((96, 64)))

    with chromium_driver() as driver:
        driver.get(live_server.url + "/")
        assert driver.title == "Qwen2.5-VL playground"
        wait_for_js(driver, "return document.getElementById('health').dataset.status === 'healthy'")
        assert driver.find_element(By.ID, "model").text == str(loaded_model.model_name)
        driver.find_element(By.CSS_SELECTOR, "#settings summary").click()
        tokens = driver.find_element(By.ID, "max-tokens")
        tokens.clear()
        tokens.send_keys("40")

        # Keys are required and none is entered yet: the page says what to do.
        refused = ask(driver, "Hello?", answers_before=0)
        assert refused["error"] and "API key" in refused["text"]

        driver.find_element(By.ID, "api-key").send_keys(key)
        driver.find_element(By.ID, "file").send_keys(str(picture))
        wait_for_js(driver, "return !document.getElementById('attachment').hidden")
        assert "red-square.png" in driver.find_element(By.ID, "attachment-name").text

        first = ask(driver, "What colour is this square?", answers_before=1)
        assert not first["error"] and first["text"]
        # The text came in many pieces, not at the end in one.
        assert int(driver.execute_script("return document.body.dataset.chunks")) > 5
        assert "prompt +" in first["meta"] and "40 completion tokens" in first["meta"]
        assert "first token" in first["meta"] and "finish: length" in first["meta"]
        assert driver.find_elements(By.CSS_SELECTOR, ".message.user img")  # the uploaded picture is shown
        driver.save_screenshot(str(tmp_path / "playground.png"))

        second = ask(driver, "And its shape?", answers_before=2)
        assert not second["error"] and second["text"]

    rows = list(RequestLog.objects.filter(endpoint=CHAT).order_by("received_at"))
    assert [(row.status_code, row.error_reason) for row in rows] == [(401, "unauthorized"), (200, ""), (200, "")]
    refused_row, first_row, second_row = rows
    assert (first_row.api_key, first_row.num_images, first_row.num_messages) == ("playground-test", 1, 1)
    assert first_row.prompt_preview == "What colour is this square?" and first_row.output_tokens == 40
    # The conversation went on: the second question came with the first turn and its picture.
    assert (second_row.num_messages, second_row.num_images, second_row.prompt_preview) == (3, 1, "And its shape?")
    assert second_row.input_tokens > first_row.input_tokens + first_row.output_tokens


def test_the_page_can_be_turned_off(client, settings):
    assert client.get("/").status_code == 200
    settings.VLM_PLAYGROUND = False
    assert client.get("/").status_code == 404
