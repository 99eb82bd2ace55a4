"""The status page in a real browser (Debian's chromium, headless, through Selenium and
chromium-driver): it renders without a console error, its chart has one point per trained
period, and its roll-back control changes the version the service serves."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.service import AUTH, TOKEN, post_period, running_server, small_settings, traffic, trained_through, wait_for

PERIODS = 6
# where to keep the page's screenshot (the README shows docs/status-page.png, taken this way)
SCREENSHOT = os.environ.get("STATUS_PAGE_SCREENSHOT")


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,1250"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"))
    try:
        yield driver
    finally:
        driver.quit()


def test_the_status_page_charts_every_period_and_rolls_back(tmp_path: Path, browser: webdriver.Chrome) -> None:
    settings = small_settings(tmp_path / "state", trainer_in_process=True)
    with running_server(settings) as url, httpx.Client(base_url=url, timeout=30) as client:
        for number, events in enumerate(traffic(PERIODS), start=1):
            post_period(client, events)
            assert client.post("/admin/rollover", headers=AUTH).status_code == 200
            wait_for(lambda n=number: trained_through(client) >= n, what=f"period {number} trained")
        newest = PERIODS + 1  # the initial model, then one version a period
        wait_for(lambda: client.get("/readyz").json()["model_version"] == newest, what="the newest served")

        browser.get(f"{url}/status")
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        browser.find_element(By.CSS_SELECTOR, "#login button").click()
        wait = WebDriverWait(browser, 20)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#chart circle.served")) == PERIODS)
        assert browser.find_element(By.ID, "serving").text == str(newest)
        assert browser.find_element(By.ID, "trained").text == str(PERIODS)
        if SCREENSHOT:
            browser.save_screenshot(SCREENSHOT)

        # roll back to the version before the newest: the service serves it, pinned
        browser.find_element(By.CSS_SELECTOR, f'button[data-version="{newest - 1}"]').click()
        wait_for(lambda: client.get("/readyz").json()["model_version"] == newest - 1, what="the roll-back served")
        assert client.get("/admin/status", headers=AUTH).json()["pointer"] == {"version": newest - 1, "pinned": True}
        wait.until(lambda b: not b.find_element(By.ID, "unpin").get_attribute("disabled"))

        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert errors == []
