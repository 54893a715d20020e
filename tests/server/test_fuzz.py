"""Schemathesis against the live server's own ``/openapi.json``: bodies built from the schema
(valid and invalid ones) on every endpoint never get a 5xx answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.server.conftest import MODEL, LiveServer, serve
from vibe_sgl_lite import ModelRunner

pytestmark = pytest.mark.slow  # a server, and hundreds of generated requests


@pytest.fixture(scope="module")
def fuzz_server(qwen3_dir: Path) -> Iterator[LiveServer]:
    """A short ``max_model_len``: a fuzzed body may ask for n=16 choices of every length, and
    each answer must come back in milliseconds for a few hundred of them to fit in seconds."""
    with ModelRunner(qwen3_dir, max_total_tokens=4096, max_model_len=48) as runner:
        with serve(runner) as live:
            yield live


@pytest.fixture(scope="module")
def api_schema(fuzz_server: LiveServer) -> Any:
    return schemathesis.openapi.from_url(fuzz_server.base_url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=30,
    deadline=None,
    derandomize=True,  # the same bodies on every run: a CI failure replays
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_no_server_errors(case: Any, fuzz_server: LiveServer) -> None:
    if isinstance(case.body, dict) and isinstance(case.body.get("model"), str):
        # A random model name is a 404 before anything else is read: name the served one.
        case.body["model"] = MODEL
    case.call_and_validate(base_url=fuzz_server.base_url, checks=[not_a_server_error], timeout=30)
