"""Headless Chromium for tests: Debian's chromium, driven by Selenium through Debian's chromedriver.

`make test` installs both (`make browser`). Nothing is downloaded: Selenium is given both binaries,
so its driver manager never runs. Reuse:

    with chromium_driver() as driver:
        admin_login(driver, live_server.url, "admin", "secret")
        driver.get(live_server.url + "/admin/dashboard/")
        wait_for_js(driver, "return document.body.dataset.dashboardDrawn === 'true'")
        driver.save_screenshot(str(tmp_path / "dashboard.png"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path(os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CHROMEDRIVER_BINARY", "/usr/bin/chromedriver"))
# Root in a container: no sandbox, no GPU, /tmp instead of a small /dev/shm, and nothing that calls out.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)


def require_chromium() -> None:
    """Skip when Chromium is not installed, except in CI, where `make test` installs it and a skip
    would hide a broken set-up."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if not missing:
        return
    message = f"not installed: {', '.join(missing)} (`make browser` installs Debian's chromium and chromium-driver)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextmanager
def chromium_driver(*, width: int = 1400, height: int = 1000) -> Iterator[WebDriver]:
    """A fresh headless Chromium with its own profile, quit and removed afterwards."""
    require_chromium()
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def admin_login(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    """Sign in through the admin's login form, as a person would."""
    driver.get(f"{base_url}/admin/login/?next=/admin/")
    driver.find_element(By.ID, "id_username").send_keys(username)
    driver.find_element(By.ID, "id_password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "#login-form [type=submit]").click()
    WebDriverWait(driver, 15).until(lambda d: "/admin/login/" not in d.current_url)
    assert driver.find_elements(By.ID, "user-tools"), "the admin did not sign in:\n" + driver.page_source[:2000]


def wait_for_js(driver: WebDriver, script: str, timeout: float = 15):
    """Wait until `script` (a function body with `return`) gives a truthy value, and return it."""
    return WebDriverWait(driver, timeout).until(lambda d: d.execute_script(script))
