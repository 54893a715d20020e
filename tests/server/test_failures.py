"""Failures inside the engine (a bug, not a bad request): the request gets a 500 or, once its
stream has started, an error event that ends it; the server keeps serving the others."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import MAX_TOTAL_TOKENS, MODEL, PROMPTS, LiveServer, serve, tiny_runner
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

FAIL_MIDWAY, FAIL_ON_ADD = 4242, 4243  # seeds that make the faulty plugin act


class Faulty(Plugin):
    """Raises on the requests whose seed asks for it: after two tokens, or when queued with an
    exception that is not the ``ValueError`` of a refused request."""

    name = "faulty"

    def applies(self, params: SamplingParams) -> bool:
        return params.seed in (FAIL_MIDWAY, FAIL_ON_ADD)

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        if params.seed == FAIL_ON_ADD:
            raise RuntimeError("a bug in a plugin's add_request")

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        if any(len(row.output_ids) >= 2 for row in rows):
            raise RuntimeError("a bug in a plugin's after_token")
        return [None] * len(rows)


@pytest.fixture(scope="module")
def faulty_server(qwen3_dir: Path) -> Iterator[LiveServer]:
    with ModelRunner(qwen3_dir, max_total_tokens=MAX_TOTAL_TOKENS, plugins=[Faulty()]) as runner:
        with serve(runner) as live:
            yield live


def assert_serving(server: LiveServer) -> None:
    assert server.request("GET", "/health") == (200, {"status": "ok"})
    response = server.client().completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=3, extra_body={"ignore_eos": True}
    )
    assert response.usage is not None and response.usage.completion_tokens == 3


@pytest.mark.parametrize("seed", [FAIL_MIDWAY, FAIL_ON_ADD], ids=["midway", "on-add"])
@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_engine_failure_is_500(faulty_server: LiveServer, path: str, seed: int) -> None:
    payload: dict[str, Any] = {"model": MODEL, "max_tokens": 8, "seed": seed, "ignore_eos": True}
    payload.update(
        {"prompt": PROMPTS[0]}
        if path == "/v1/completions"
        else {"messages": [{"role": "user", "content": PROMPTS[0]}]}
    )
    status, answer = faulty_server.request("POST", path, payload)
    assert status == 500, answer
    assert answer["error"]["type"] == "server_error"
    assert "a bug in a plugin's" in answer["error"]["message"]
    assert_serving(faulty_server)


def test_failure_inside_a_stream_ends_it_with_an_error_event(faulty_server: LiveServer) -> None:
    # create() returns: the stream started with HTTP 200; the failure comes in it, as an event
    stream = faulty_server.client().completions.create(
        model=MODEL,
        prompt=PROMPTS[0],
        max_tokens=8,
        seed=FAIL_MIDWAY,
        stream=True,
        extra_body={"ignore_eos": True},  # no EOS before the plugin fails
    )
    with pytest.raises(openai.APIError, match="a bug in a plugin's after_token"):
        for _ in stream:
            pass
    stats = faulty_server.idle_stats()
    assert stats["faulty.errors"] >= 1
    assert_serving(faulty_server)


def test_failed_step_fails_its_requests_and_the_server_goes_on(faulty_server: LiveServer) -> None:
    """An exception out of ``Engine.step`` fails every request in the step (HTTP 500), and the
    next request is served."""
    engine = faulty_server.loop.engine
    real_step = engine.step

    def broken_step() -> Any:
        engine.step = real_step  # type: ignore[method-assign]  # once only
        raise RuntimeError("a bug in a step")

    engine.step = broken_step  # type: ignore[method-assign]
    try:
        with pytest.raises(openai.InternalServerError, match="a bug in a step"):
            faulty_server.client().completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=4)
    finally:
        engine.step = real_step  # type: ignore[method-assign]
    assert faulty_server.idle_stats()["num_running_requests"] == 0
    assert_serving(faulty_server)


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_dead_engine_thread_fails_health_and_requests(qwen3_dir: Path) -> None:
    """If the engine thread ever dies, ``/health`` says so and requests fail at once (503)
    instead of waiting forever for a thread that will never answer."""
    with tiny_runner(qwen3_dir) as runner, serve(runner) as live:

        def die(engine: Any) -> None:
            raise SystemExit  # not an Exception: nothing in the engine thread catches it

        live.loop.call(die)
        deadline = time.monotonic() + 10
        while live.request("GET", "/health")[0] == 200:
            assert time.monotonic() < deadline, "/health still says ok"
            time.sleep(0.01)
        status, answer = live.request("GET", "/health")
        assert status == 503 and answer["error"]["type"] == "server_error"
        with pytest.raises(openai.APIStatusError) as caught:
            live.client().completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=3)
        assert caught.value.status_code == 503
