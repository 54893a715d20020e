"""A live server and a headless Chromium for the page's tests and ``scripts/screenshot_page.py``.

The browser is Debian's ``chromium`` driven through its ``chromium-driver`` by selenium: both
come from apt (``scripts/test.sh`` installs them), so nothing is downloaded at test time and the
test runs offline.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
MISSING = (
    None
    if CHROMIUM and CHROMEDRIVER
    else "needs Debian's chromium and chromium-driver (apt-get install -y chromium "
    "chromium-driver; scripts/test.sh installs them)"
)
# Flags that work in a container as root, with no network: no sandbox, no GPU, no phoning home.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread on a free port; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the kernel picks the port; uvicorn takes the bound socket
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(60)
        sock.close()


@contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator[WebDriver]:
    """A headless Chromium with a fresh profile, its console log readable."""
    assert CHROMIUM and CHROMEDRIVER, MISSING
    with tempfile.TemporaryDirectory(prefix="vibe-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        options.add_argument(f"--window-size={width},{height}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        try:
            yield driver
        finally:
            driver.quit()


def wait_for_panel(driver: WebDriver, timeout: float = 30) -> None:
    """Until the engine panel has drawn its first state."""
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "engine-status").text == "live"
    )


def set_field(driver: WebDriver, element_id: str, value: str) -> None:
    field = driver.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(value)


def chat(driver: WebDriver, message: str, max_tokens: int, timeout: float = 180) -> str:
    """Send ``message`` from the chat box and wait for the streamed answer; returns its text."""
    set_field(driver, "max-tokens", str(max_tokens))
    set_field(driver, "temperature", "0")  # greedy: the same answer every run
    set_field(driver, "prompt", message)
    driver.find_element(By.ID, "send").click()
    WebDriverWait(driver, timeout).until(
        lambda d: d.find_element(By.ID, "chat-status").text.startswith(("done", "error"))
    )
    answers = driver.find_elements(By.CSS_SELECTOR, ".message.assistant .content")
    return str(driver.execute_script("return arguments[0].textContent", answers[-1]))
