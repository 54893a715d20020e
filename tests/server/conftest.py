"""Live servers for the server tests: ``create_app`` under uvicorn in a thread, on loopback.

Each server listens on a socket the kernel bound to a free port (never a fixed one: the suite
runs under ``pytest -n auto``), and is reached through the official ``openai`` client or raw
HTTP. The tiny random Qwen3 of ``tests/conftest.py`` serves; a second runner on the same folder
(``reference``) computes what the server must answer, through the Python API.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import uvicorn
from fastapi import FastAPI

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.server import EngineLoop, create_app

MODEL = "tiny"
MAX_TOTAL_TOKENS = 16384  # room for 32 concurrent requests and for 8 streams of 1000 tokens
PROMPTS = [
    "Once upon a time",
    "The quick brown fox",
    "def forward(self, x):",
    "Café naïve résumé",
    "ROMEO: But soft",
    "1 2 3 4 5",
    "日本語のテキスト",
    "Emoji: 🙂",
]


@dataclass
class LiveServer:
    app: FastAPI
    host: str
    port: int
    api_key: str | None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def loop(self) -> EngineLoop:
        engine_loop: EngineLoop = self.app.state.engine_loop()
        return engine_loop

    def client(self, api_key: str | None = None) -> openai.OpenAI:
        """The official client; no retries, so every request is sent exactly once."""
        return openai.OpenAI(
            base_url=self.base_url + "/v1",
            api_key=api_key or self.api_key or "none",
            max_retries=0,
            timeout=60,
        )

    def async_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=self.base_url + "/v1",
            api_key=self.api_key or "none",
            max_retries=0,
            timeout=60,
        )

    def request(
        self,
        method: str,
        path: str,
        body: bytes | dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Raw HTTP (for what the openai client would refuse to send): (status, parsed JSON)."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
        try:
            conn.request(
                method, path, data, {"content-type": "application/json", **(headers or {})}
            )
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, json.loads(raw) if raw else None

    def idle_stats(self, timeout: float = 30.0) -> dict[str, Any]:
        """The engine's stats once no request is running or waiting (aborts are processed in
        the engine thread, some time after the client went away)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.loop.call(lambda engine: engine.get_stats()).result(timeout)
            if stats["num_running_requests"] == stats["num_waiting_requests"] == 0:
                return stats
            assert time.monotonic() < deadline, f"requests still running after {timeout}s: {stats}"
            time.sleep(0.02)


@contextmanager
def serve(
    runner: ModelRunner,
    name: str = MODEL,
    api_key: str | None = None,
    reasoning_parser: str | None = None,
) -> Iterator[LiveServer]:
    """``create_app(runner, name, api_key)`` under uvicorn in a daemon thread until the block
    ends; the app's lifespan starts and joins the engine thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the kernel picks a free port; uvicorn serves this socket
    host, port = sock.getsockname()
    app = create_app(runner, name, api_key, reasoning_parser=reasoning_parser)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield LiveServer(app, host, port, api_key)
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def tiny_runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(model_dir, max_total_tokens=MAX_TOTAL_TOKENS)


@pytest.fixture(scope="session")
def server(qwen3_dir: Path) -> Iterator[LiveServer]:
    """The tiny Qwen3 served as ``MODEL``, shared by the tests of one worker, which run one at
    a time: a test that looks at the engine's stats sees only its own requests."""
    with tiny_runner(qwen3_dir) as runner, serve(runner) as live:
        yield live


@pytest.fixture(scope="session")
def reference(qwen3_dir: Path) -> Iterator[ModelRunner]:
    """Another runner on the same weights: what the server must answer, computed in Python."""
    with tiny_runner(qwen3_dir) as runner:
        yield runner
