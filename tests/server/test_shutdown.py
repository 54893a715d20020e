"""Stopping a server that is streaming: ``vibe-sgl-lite serve`` exits 0 on SIGTERM or SIGINT
and its open stream ends; in-process, a shutdown that outlasts uvicorn's grace period still
ends the stream and stops the engine thread."""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import uvicorn

from tests.server.conftest import MODEL, tiny_runner
from vibe_sgl_lite.server import create_app
from vibe_sgl_lite.server.launch import GRACEFUL_SHUTDOWN_S

LONG_STREAM = {"prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}


def free_port() -> int:
    """A port free right now: ``serve`` binds it itself, so only its number can be passed."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def open_stream(
    port: int, model: str
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "POST",
        "/v1/completions",
        json.dumps({"model": model, **LONG_STREAM}),
        {"content-type": "application/json"},
    )
    response = conn.getresponse()
    assert response.status == 200
    assert response.readline().startswith(b"data: {")  # the stream is under way
    return conn, response


def read_to_end(response: http.client.HTTPResponse) -> list[bytes]:
    """Every remaining line; an end that cuts the chunked body short also counts as the end."""
    lines: list[bytes] = []
    try:
        while line := response.readline():
            lines.append(line)
    except http.client.IncompleteRead:
        pass
    return lines


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_exits_0_on_signal_while_streaming(qwen3_dir: Path, sig: signal.Signals) -> None:
    port = free_port()
    command = [sys.executable, "-m", "vibe_sgl_lite", "serve", "--model", str(qwen3_dir)]
    command += ["--port", str(port), "--max-total-tokens", "4096"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read().decode()  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the server did not come up"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        conn, response = open_stream(port, qwen3_dir.name)
        proc.send_signal(sig)
        signalled = time.monotonic()
        read_to_end(response)  # returns: the stream ended (a hang would time out the socket)
        conn.close()
        status = proc.wait(timeout=GRACEFUL_SHUTDOWN_S + 20)
        elapsed = time.monotonic() - signalled
        output = proc.stdout.read().decode()  # type: ignore[union-attr]
        assert status == 0, output
        assert elapsed < GRACEFUL_SHUTDOWN_S + 10, output
        assert "Traceback" not in output, output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_past_grace_period_ends_streams(qwen3_dir: Path) -> None:
    """When uvicorn's grace period runs out it cancels the handlers: the stream's requests are
    aborted, the connection closes, and the lifespan stops the engine thread."""
    with tiny_runner(qwen3_dir) as runner:
        step = runner.engine.step

        def slow_step() -> object:  # 1000 tokens must outlast the 1 s grace period on any CPU
            time.sleep(0.005)
            return step()

        runner.engine.step = slow_step  # type: ignore[method-assign]
        app = create_app(runner, MODEL)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="critical", timeout_graceful_shutdown=1)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.01)
        engine_loop = app.state.engine_loop()
        conn, response = open_stream(port, MODEL)
        server.should_exit = True
        stopped = time.monotonic()
        lines = read_to_end(response)
        conn.close()
        thread.join(20)
        assert not thread.is_alive()
        assert time.monotonic() - stopped < 10
        assert b"data: [DONE]\n" not in lines  # cut short, not run to its 1000 tokens
        assert not engine_loop.is_alive() and not engine_loop.live
        stats = engine_loop.get_stats()
        assert stats["num_running_requests"] == stats["num_waiting_requests"] == 0
        assert stats["num_generated_tokens"] < 1000
        sock.close()
