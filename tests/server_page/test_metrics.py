"""``GET /metrics`` and ``GET /v1/engine/state`` through the app (FastAPI's TestClient runs the
lifespan, so the engine thread and its ``on_finished`` listener are the real ones)."""

from __future__ import annotations

import time
from typing import Any

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.server_page.conftest import MODEL_NAME
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.server import create_app
from vibe_sgl_lite.server.dashboard import TokenRate
from vibe_sgl_lite.server.metrics import ServerMetrics

GAUGES = (
    "vibe_running_requests",
    "vibe_waiting_requests",
    "vibe_kv_pages_used",
    "vibe_kv_pages_free",
    "vibe_prefix_cache_hit_rate",
)


def scrape(client: TestClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``, parsed by prometheus-client's own parser."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def complete(client: TestClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/completions", json={"model": MODEL_NAME, "temperature": 0, **body})
    assert response.status_code == 200, response.text
    return dict(response.json())


@pytest.mark.integration
def test_metrics_count_finished_requests(runner: ModelRunner) -> None:
    with TestClient(create_app(runner, MODEL_NAME)) as client:
        first = complete(client, prompt="ROMEO:", max_tokens=6)
        text = first["choices"][0]["text"]
        assert first["choices"][0]["finish_reason"] == "length" and text
        # Greedy again, stopping on the text it will produce: a "stop" of the same tokens.
        second = complete(client, prompt="ROMEO:", max_tokens=20, stop=[text])
        assert second["choices"][0]["finish_reason"] == "stop"
        settled_state(client)
        samples = scrape(client)

    usages = [first["usage"], second["usage"]]
    assert samples[("vibe_requests_total", (("finish_reason", "length"),))] == 1
    assert samples[("vibe_requests_total", (("finish_reason", "stop"),))] == 1
    assert samples[("vibe_prompt_tokens_total", ())] == sum(u["prompt_tokens"] for u in usages)
    generated = sum(u["completion_tokens"] for u in usages)
    assert samples[("vibe_generation_tokens_total", ())] == generated
    assert samples[("vibe_time_to_first_token_seconds_count", ())] == 2
    assert samples[("vibe_e2e_request_latency_seconds_count", ())] == 2
    several = sum(u["completion_tokens"] > 1 for u in usages)
    assert samples[("vibe_time_per_output_token_seconds_count", ())] == several
    inf = (("le", "+Inf"),)
    assert samples[("vibe_time_to_first_token_seconds_bucket", inf)] == 2
    ttft = samples[("vibe_time_to_first_token_seconds_sum", ())]
    assert 0 < ttft <= samples[("vibe_e2e_request_latency_seconds_sum", ())]

    # The gauges, read at scrape time: nothing runs, the prefix cache holds some pages.
    assert samples[("vibe_running_requests", ())] == 0
    assert samples[("vibe_waiting_requests", ())] == 0
    stats = runner.get_stats()
    assert samples[("vibe_kv_pages_used", ())] + samples[("vibe_kv_pages_free", ())] == (
        stats["kv_pages_total"]
    )
    assert samples[("vibe_kv_pages_free", ())] == stats["kv_pages_free"]
    assert 0 <= samples[("vibe_prefix_cache_hit_rate", ())] <= 1


@pytest.mark.integration
def test_each_app_has_its_own_registry(runner: ModelRunner) -> None:
    """Two apps in one process: no "Duplicated timeseries", and separate counts."""
    first, second = create_app(runner, MODEL_NAME), create_app(runner, MODEL_NAME)
    with TestClient(first) as client:
        complete(client, prompt="HAMLET:", max_tokens=3)
        assert scrape(client)[("vibe_generation_tokens_total", ())] == 3
    with TestClient(second) as client:
        samples = scrape(client)
    assert samples[("vibe_generation_tokens_total", ())] == 0
    assert not any(name == "vibe_requests_total" for name, _ in samples)
    assert all((name, ()) in samples for name in GAUGES)
    assert prometheus_client.REGISTRY.get_sample_value("vibe_generation_tokens_total") is None


@pytest.mark.integration
def test_metrics_and_page_are_not_behind_the_api_key(runner: ModelRunner) -> None:
    """As in vLLM: a scraper carries no key. The page loads without one, its data needs it."""
    with TestClient(create_app(runner, MODEL_NAME, api_key="secret")) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/").status_code == 200
        assert client.get("/static/page.js").status_code == 200
        assert client.get("/v1/engine/state").status_code == 401
        key = {"Authorization": "Bearer secret"}
        assert client.get("/v1/engine/state", headers=key).status_code == 200


def settled_state(client: TestClient) -> dict[str, Any]:
    """The state once the last step's snapshot is out: ``EngineLoop`` pushes a request's final
    event before it publishes the stats of that step, so a poll right after a reply can still
    show the request running."""
    deadline = time.monotonic() + 30
    while True:
        state = dict(client.get("/v1/engine/state").json())
        if state["running_requests"] == state["waiting_requests"] == 0:
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.01)


@pytest.mark.integration
def test_engine_state(runner: ModelRunner) -> None:
    with TestClient(create_app(runner, MODEL_NAME)) as client:
        before = client.get("/v1/engine/state").json()
        reply = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": "Who art thou, and whence comest?"}],
                "max_tokens": 40,
                "temperature": 0,
            },
        ).json()
        after = settled_state(client)

    stats = runner.get_stats()
    assert after["model"] == MODEL_NAME
    assert after["kv_pages_total"] == stats["kv_pages_total"]
    assert after["kv_pages_used"] + after["kv_pages_free"] == after["kv_pages_total"]
    assert after["page_size"] == stats["page_size"]
    assert after["max_model_len"] == stats["max_model_len"]
    assert after["total_requests"] == before["total_requests"] + 1
    generated = reply["usage"]["completion_tokens"]
    assert after["generated_tokens"] == before["generated_tokens"] + generated
    # The finished chat's prompt and answer stay in the prefix cache: pages held, tree nodes.
    assert after["cached_pages"] >= 1 and after["radix_tree_nodes"] >= 1
    assert after["kv_pages_used"] >= after["cached_pages"] > 0
    assert 0.0 <= after["prefix_cache_hit_rate"] <= 1.0
    assert after["tokens_per_second"] > 0  # tokens generated since the previous poll


def test_token_rate_is_over_the_window() -> None:
    rate = TokenRate(window_s=3.0)
    assert rate.update(0, now=0.0) == 0.0
    assert rate.update(100, now=1.0) == 100.0
    assert rate.update(200, now=2.0) == 100.0
    assert rate.update(500, now=4.0) == pytest.approx(400 / 3)  # window starts at t=1
    assert rate.update(500, now=20.0) == pytest.approx(0.0)  # idle: nothing since t=4
    assert rate.update(600, now=21.0) == pytest.approx(100 / 17)  # since t=4, the last >= 3 s old


def test_observe_derives_the_end_to_end_latency() -> None:
    metrics = ServerMetrics(lambda: None)  # no engine: no gauges
    timed = {"queue_time": 0.1, "time_to_first_token": 0.5, "time_per_output_token": 0.1}
    metrics.observe(GenerationOutput([1, 2, 3], list(range(11)), "x", "length", metrics=timed))
    metrics.observe(GenerationOutput([1, 2], [], "", "abort"))  # aborted before a token
    value = metrics.registry.get_sample_value
    assert value("vibe_requests_total", {"finish_reason": "length"}) == 1
    assert value("vibe_requests_total", {"finish_reason": "abort"}) == 1
    assert value("vibe_prompt_tokens_total") == 5
    assert value("vibe_generation_tokens_total") == 11
    assert value("vibe_time_to_first_token_seconds_count") == 1
    assert value("vibe_e2e_request_latency_seconds_sum") == pytest.approx(0.5 + 10 * 0.1)
    assert value("vibe_running_requests") is None
