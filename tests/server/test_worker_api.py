"""The endpoints SGLang's gateway probes (``server/worker_api.py``): their shapes and statuses,
bad input as OpenAI-shaped 400s naming the field, the API key, and vLLM's metric names."""

from __future__ import annotations

import http.client
import time
from pathlib import Path

import pytest

from tests.server.conftest import MODEL, PROMPTS, LiveServer, serve, tiny_runner
from vibe_sgl_lite import __version__


def raw(server: LiveServer, method: str, path: str) -> tuple[int, str]:
    """Status and text body (``/flush_cache`` and ``/health_generate`` answer no JSON)."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def test_health_generate_runs_one_token(server: LiveServer) -> None:
    before = server.idle_stats()["num_requests"]
    assert raw(server, "GET", "/health_generate")[0] == 200
    assert server.idle_stats()["num_requests"] == before + 1


def test_server_info(server: LiveServer) -> None:
    for path in ("/server_info", "/get_server_info"):
        status, info = server.request("GET", path)
        assert status == 200
        assert info["version"] == __version__
        assert info["served_model_name"] == MODEL
        assert info["page_size"] == 16 and info["max_total_tokens"] == 16384
        assert info["max_total_num_tokens"] >= 16384 - 16
        assert info["context_length"] == info["max_req_input_len"] + 1
        assert info["model_path"] and info["dp_size"] == 1
        assert isinstance(info["internal_states"], list) and "load" in info["internal_states"][0]


def test_model_info(server: LiveServer) -> None:
    for path in ("/model_info", "/get_model_info"):
        status, info = server.request("GET", path)
        assert status == 200
        assert info["is_generation"] is True
        assert info["model_path"] == info["tokenizer_path"] != ""


def test_loads_idle_count_cached_pages_as_free(server: LiveServer) -> None:
    """An idle worker whose prefix cache holds pages is not loaded: a gateway reading those
    pages as used would route away from the cache it is after (SGLang and vLLM count them free)."""
    server.client().completions.create(model=MODEL, prompt=PROMPTS[4] * 8, max_tokens=2)
    assert server.idle_stats()["num_evictable_pages"] > 0
    status, load = server.request("GET", "/get_load")
    assert status == 200
    (rank0,) = load
    assert rank0["dp_rank"] == rank0["num_reqs"] == rank0["num_waiting_reqs"] == 0
    assert rank0["num_tokens"] == 0
    status, loads = server.request("GET", "/v1/loads")
    assert status == 200 and loads["dp_rank_count"] == 1 and loads["version"] == __version__
    (rank,) = loads["loads"]
    assert rank["num_running_reqs"] == rank["num_waiting_reqs"] == 0
    assert rank["token_usage"] == 0.0 and rank["num_used_tokens"] == 0
    assert rank["max_total_num_tokens"] > 0
    label = f'vllm:kv_cache_usage_perc{{model_name="{MODEL}"}} '
    assert raw(server, "GET", "/metrics")[1].split(label, 1)[1].startswith("0.0\n")


def test_loads_count_the_pages_requests_hold(server: LiveServer) -> None:
    """While a request runs, its pages are in use (and only those: the cache's are free)."""
    stream = server.client().completions.create(
        model=MODEL, prompt=PROMPTS[0], max_tokens=400, stream=True, extra_body={"ignore_eos": True}
    )
    chunks = iter(stream)
    deadline = time.monotonic() + 30
    while True:  # the published statistics follow the engine within STATS_INTERVAL_S
        next(chunks)
        (rank,) = server.request("GET", "/v1/loads")[1]["loads"]
        if rank["num_running_reqs"] == 1 or time.monotonic() > deadline:
            break
    assert rank["num_running_reqs"] == 1 and 0.0 < rank["token_usage"] < 1.0
    assert rank["num_used_tokens"] > 0
    stream.close()
    server.idle_stats()


def test_flush_cache_get_and_post(server: LiveServer) -> None:
    server.client().completions.create(model=MODEL, prompt="Once upon a time", max_tokens=2)
    server.idle_stats()
    for method in ("POST", "GET"):
        status, text = raw(server, method, "/flush_cache")
        assert status == 200 and "flushed" in text
    assert server.idle_stats()["num_cached_pages"] == 0


def test_models_say_sglang(server: LiveServer) -> None:
    """SGLang's gateway tells an SGLang worker from a vLLM one by ``owned_by``."""
    status, models = server.request("GET", "/v1/models")
    (card,) = models["data"]
    assert status == 200 and card["id"] == MODEL and card["owned_by"] == "sglang"
    assert card["root"] and card["max_model_len"] > 0


def test_version(server: LiveServer) -> None:
    assert server.request("GET", "/version") == (200, {"version": __version__})


def test_tokenize_and_detokenize(server: LiveServer) -> None:
    status, out = server.request("POST", "/tokenize", {"prompt": "Hello world"})
    assert status == 200 and out["count"] == len(out["tokens"]) > 0
    assert out["max_model_len"] > 0
    status, plain = server.request(
        "POST", "/tokenize", {"prompt": "Hello world", "add_special_tokens": False}
    )
    assert status == 200
    status, back = server.request("POST", "/detokenize", {"tokens": plain["tokens"]})
    assert (status, back) == (200, {"prompt": "Hello world"})


def test_tokenizer_info_has_vllms_shape(server: LiveServer) -> None:
    """What lm-evaluation-harness reads to use the server as its tokenizer: ``eos_token``
    (encoded through ``/tokenize`` to one id, its stop token) and the chat template."""
    status, info = server.request("GET", "/tokenizer_info")
    assert status == 200
    assert info["tokenizer_class"] and info["model_max_length"] > 0
    assert {"bos_token", "pad_token", "unk_token"} <= info.keys()
    status, eos = server.request(
        "POST", "/tokenize", {"prompt": info["eos_token"], "add_special_tokens": False}
    )
    assert status == 200 and len(eos["tokens"]) == 1
    assert isinstance(info["chat_template"], str)


@pytest.mark.parametrize(
    "path, body, param",
    [
        ("/tokenize", {}, "prompt"),
        ("/tokenize", {"prompt": 5}, "prompt"),
        ("/tokenize", {"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
        ("/tokenize", {"prompt": "x", "foo": 1}, "foo"),
        ("/detokenize", {}, "tokens"),
        ("/detokenize", {"tokens": []}, "tokens"),
        ("/detokenize", {"tokens": ["a"]}, "tokens.0"),
        ("/detokenize", {"tokens": [-1]}, "tokens"),
        ("/detokenize", {"tokens": [10**9]}, "tokens"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(
    server: LiveServer, path: str, body: dict[str, object], param: str
) -> None:
    status, error = server.request("POST", path, body)
    assert status == 400, error
    assert error["error"]["param"] == param and error["error"]["type"] == "invalid_request_error"


def test_unknown_model_is_a_404(server: LiveServer) -> None:
    status, error = server.request("POST", "/tokenize", {"prompt": "x", "model": "nope"})
    assert status == 404 and error["error"]["param"] == "model"


def test_vllm_metric_names(server: LiveServer) -> None:
    server.client().completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=3)
    server.idle_stats()
    status, text = raw(server, "GET", "/metrics")
    assert status == 200
    label = f'{{model_name="{MODEL}"}}'
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:prefix_cache_queries_total",
        "vllm:prefix_cache_hits_total",
        "vllm:time_to_first_token_seconds_count",
        "vllm:inter_token_latency_seconds_count",
        "vllm:e2e_request_latency_seconds_count",
    ):
        assert f"{name}{label}" in text, name
    assert "vibe_prompt_tokens_total" in text  # today's names stay


def test_api_key_guards_text_and_changes_not_probes(qwen3_dir: Path) -> None:
    with tiny_runner(qwen3_dir) as runner, serve(runner, api_key="secret") as live:
        for path in ("/server_info", "/model_info", "/get_load", "/version", "/health_generate"):
            assert raw(live, "GET", path)[0] == 200, path
        assert live.request("GET", "/v1/loads")[0] == 401
        assert live.request("POST", "/tokenize", {"prompt": "x"})[0] == 401
        assert live.request("POST", "/detokenize", {"tokens": [1]})[0] == 401
        assert live.request("GET", "/tokenizer_info")[0] == 401
        assert raw(live, "POST", "/flush_cache")[0] == 401
        key = {"authorization": "Bearer secret"}
        assert live.request("POST", "/tokenize", {"prompt": "x"}, key)[0] == 200
        assert live.request("GET", "/v1/loads", None, key)[0] == 200


def test_stopped_engine_is_a_503(qwen3_dir: Path) -> None:
    with tiny_runner(qwen3_dir) as runner, serve(runner) as live:
        live.loop.shutdown()
        assert raw(live, "GET", "/health_generate")[0] == 503
        assert live.request("GET", "/get_load")[0] == 503
        assert raw(live, "POST", "/flush_cache")[0] == 503
