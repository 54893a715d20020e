"""The live page in a real headless Chromium: it loads, its panel fills, a chat streams, and the
KV bar moves. Skipped only when Debian's chromium / chromium-driver are absent."""

from __future__ import annotations

import os
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.server_page.browser import (
    MISSING,
    chat,
    chromium,
    live_server,
    set_field,
    wait_for_panel,
)
from tests.server_page.conftest import MODEL_NAME
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.server import create_app

REQUIRED = bool(os.environ.get("VIBE_SGL_LITE_REQUIRE_BROWSER"))
"""Set by ``.ci/run``: there the browser must be present and the test must run, never skip."""
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(MISSING is not None and not REQUIRED, reason=str(MISSING)),
]


def test_browser_present_where_required() -> None:
    assert MISSING is None, MISSING


# Installed in the page before sending: every length the answer passes through, and every value
# the KV bar shows, recorded by the browser itself as the DOM changes (polling from Python could
# miss a fast stream).
RECORDER = """
window.answerLengths = [];
window.kvUsed = [];
const answer = () => document.querySelector(".message.assistant .content");
new MutationObserver(() => {
  const a = answer();
  if (a) window.answerLengths.push(a.textContent.length);
}).observe(document.getElementById("messages"), {childList: true, subtree: true, characterData: true});
const bar = document.getElementById("kv-bar");
new MutationObserver(() => window.kvUsed.push(Number(bar.getAttribute("aria-valuenow"))))
  .observe(bar, {attributes: true, attributeFilter: ["aria-valuenow"]});
"""


def kv_used(driver: WebDriver) -> int:
    return int(driver.find_element(By.ID, "kv-bar").get_attribute("aria-valuenow") or 0)


def console_errors(driver: WebDriver) -> list[dict[str, Any]]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_page_chats_and_shows_the_engine(runner: ModelRunner) -> None:
    runner.flush_cache()  # an empty prefix cache: the chat's pages show on the bar
    with live_server(create_app(runner, MODEL_NAME)) as url, chromium() as driver:
        driver.get(url + "/")
        assert driver.title == "vibe-sgl-lite"
        wait_for_panel(driver)
        assert driver.find_element(By.ID, "model-name").text == MODEL_NAME
        bar = driver.find_element(By.ID, "kv-bar")
        total = runner.get_stats()["kv_pages_total"]
        assert bar.get_attribute("aria-valuemax") == str(total)
        assert f"{total} pages" in driver.find_element(By.ID, "kv-text").text
        assert driver.find_element(By.ID, "running").text == "0"
        used_before = kv_used(driver)
        requests_before = int(driver.find_element(By.ID, "total-requests").text)

        driver.execute_script(RECORDER)
        answer = chat(driver, "Who art thou, and whence comest thou?", max_tokens=150)

        status = driver.find_element(By.ID, "chat-status").text
        assert status.startswith("done"), status
        assert answer.strip()
        lengths = [n for n in driver.execute_script("return window.answerLengths") if n]
        assert len(set(lengths)) >= 3, f"the answer did not stream: lengths {lengths}"
        assert lengths == sorted(lengths) and lengths[-1] == len(answer)
        # The finished chat stays in the prefix cache, so the bar keeps the pages it took.
        WebDriverWait(driver, 10).until(lambda d: kv_used(d) > used_before)
        assert max(driver.execute_script("return window.kvUsed")) > used_before
        WebDriverWait(driver, 10).until(
            lambda d: int(d.find_element(By.ID, "total-requests").text) == requests_before + 1
        )
        assert int(driver.find_element(By.ID, "tree-nodes").text) >= 1
        assert console_errors(driver) == []


def test_page_sends_the_api_key(runner: ModelRunner) -> None:
    with live_server(create_app(runner, MODEL_NAME, api_key="secret")) as url, chromium() as driver:
        driver.get(url + "/")
        status = driver.find_element(By.ID, "engine-status")
        WebDriverWait(driver, 30).until(lambda d: "API key" in status.text)
        set_field(driver, "api-key", "secret")
        wait_for_panel(driver)
        assert driver.find_element(By.ID, "model-name").text == MODEL_NAME
        assert chat(driver, "Speak.", max_tokens=5)
        assert driver.find_element(By.ID, "chat-status").text.startswith("done")
