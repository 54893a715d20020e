"""Attention methods and the int8 KV cache, end to end through ``ModelRunner``.

* A method whose budget covers the whole context reads every key, and greedy decoding then
  equals transformers', with prefix-cache hits, chunked prefill and preemption in the workload,
  on every backend (Triton under ``TRITON_INTERPRET=1``).
* Small budgets run through the same workload with the engine's invariants checked every step.
* int8 KV: logits within a stated tolerance of the full-precision cache, greedy agreement
  measured on the bundled model, prefix sharing and preemption leave its outputs unchanged, and
  the pool holds about twice the tokens of a bf16 one in the same memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.model_factory import hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core import capacity as capacity_module
from vibe_sgl_lite.kernels.sparse import AttentionMethod, StreamingAttention

pytestmark = [pytest.mark.kernels, pytest.mark.integration]

SYSTEM = list(range(10, 40))
PROMPTS = [SYSTEM + [100 + i, 200 + i, 7 + i] for i in range(4)] + [[300, 301, 302, 303, 304]]
MAX_NEW = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)
WORKLOAD = dict(
    page_size=4, max_total_tokens=64, chunked_prefill_size=7
)  # hits, chunks, preemption

FULL_BUDGET = {
    "quest": dict(attention_method="quest", budget=1000),
    "quest-ratio": dict(attention_method="quest", selection_ratio=1.0),
    "streaming": dict(attention_method="streaming", attention_window=10_000),
    "topk_oracle": dict(attention_method="topk_oracle", budget=100_000),
}
SMALL_BUDGET = {
    "quest": dict(attention_method="quest", budget=2),
    "streaming": dict(attention_method="streaming", num_sink_tokens=2, attention_window=4),
    "topk_oracle": dict(attention_method="topk_oracle", selection_ratio=0.25),
}


@pytest.fixture(scope="module")
def reference(qwen3_dir: Path) -> list[list[int]]:
    hf = load_hf(qwen3_dir)
    return [hf_greedy(hf, p, MAX_NEW) for p in PROMPTS]


def run_workload(runner: ModelRunner) -> list[list[int]]:
    runner.generate_outputs(PROMPTS[0], GREEDY)  # warm the prefix cache
    outs = [o.token_ids for o in runner.generate_outputs(PROMPTS, GREEDY)]
    stats = runner.get_stats()
    assert stats["num_preemptions"] > 0 and stats["num_cached_tokens"] > 0
    return outs


# Triton runs in the interpreter (slow): one method covers its selected-keys path.
FULL_BUDGET_RUNS = [(m, b) for m in FULL_BUDGET for b in ("torch", "reference")] + [
    ("quest", "triton")
]


@pytest.mark.parametrize("method, backend", FULL_BUDGET_RUNS)
def test_full_budget_equals_dense_and_transformers(
    qwen3_dir: Path, reference: list[list[int]], method: str, backend: str
) -> None:
    settings = {**WORKLOAD, **FULL_BUDGET[method], "attention_backend": backend}
    with ModelRunner(qwen3_dir, **settings) as runner:
        assert run_workload(runner) == reference
        assert runner.get_stats()["attention_kv_read_fraction"] == 1.0


@pytest.mark.parametrize("method", list(SMALL_BUDGET))
def test_small_budgets_read_less_and_keep_the_engine_consistent(
    qwen3_dir: Path, method: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_SGL_LITE_CHECK_INVARIANTS", "1")
    with ModelRunner(qwen3_dir, **WORKLOAD, **SMALL_BUDGET[method]) as runner:
        outs = run_workload(runner)
        assert all(len(tokens) == MAX_NEW for tokens in outs)
        assert runner.get_stats()["attention_kv_read_fraction"] < 0.75
        runner.flush_cache()
        assert runner.get_stats()["kv_pages_free"] == runner.get_stats()["kv_pages_total"]


def test_small_budget_gives_the_same_tokens_on_torch_and_triton(qwen3_dir: Path) -> None:
    """The Triton kernel reading per-head slot lists agrees with the torch selected path."""
    outs = []
    for backend in ("torch", "triton"):
        with ModelRunner(
            qwen3_dir, attention_backend=backend, page_size=4, **SMALL_BUDGET["quest"]
        ) as r:
            outs.append([o.token_ids for o in r.generate_outputs(PROMPTS[:2], GREEDY)])
    assert outs[0] == outs[1]


def test_per_layer_methods_and_dense_default(qwen3_dir: Path, reference: list[list[int]]) -> None:
    window = StreamingAttention(num_sink_tokens=1, window=2)
    with ModelRunner(qwen3_dir, attention_method=[AttentionMethod(), window], page_size=4) as r:
        r.generate_outputs(PROMPTS, GREEDY)
        fraction = r.get_stats()["attention_kv_read_fraction"]
        assert 0.5 < fraction < 1.0  # layer 0 reads everything, layer 1 three keys a step
    with ModelRunner(qwen3_dir, page_size=4) as r:  # the default reads everything
        assert [o.token_ids for o in r.generate_outputs(PROMPTS, GREEDY)] == reference
        assert r.get_stats()["attention_kv_read_fraction"] == 1.0


def test_capture_attention_records_raw_scores_per_request_and_layer(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, page_size=4) as runner:
        with runner.capture_attention(layers=[1]) as records:
            outs = runner.generate_outputs(PROMPTS[:2], SamplingParams(temperature=0, max_tokens=3))
        assert {r.layer for r in records} == {1}
        for out in outs:
            mine = [r for r in records if r.request_id == out.request_id]
            assert len(mine) == 2  # tokens 2 and 3 are decode steps; token 1 came from prefill
            lens = [r.scores.shape[1] for r in mine]
            assert lens == [len(out.prompt_token_ids) + 1, len(out.prompt_token_ids) + 2]
            assert all(r.scores.shape[0] == 4 for r in mine)  # num_attention_heads
        runner.generate_outputs(PROMPTS[:1], GREEDY)
        assert len(records) == 4  # nothing recorded after the block


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(attention_method="sparse"), "attention_method must be one of"),
        (dict(attention_method="quest"), "exactly one of budget or selection_ratio"),
        (dict(attention_method="quest", budget=0), "budget must be"),
        (
            dict(attention_method="quest", selection_ratio=1.5),
            r"selection_ratio must be .*\(0, 1\]",
        ),
        (dict(attention_method="streaming", num_sink_tokens=-1), "num_sink_tokens must be"),
        (dict(attention_method="streaming", attention_window=0), "attention_window must be"),
        (dict(attention_method=[AttentionMethod()]), "per-layer list needs 2 entries"),
        (dict(kv_cache_dtype="int8", attention_backend="torch"), "kv_cache_dtype"),
        (dict(kv_cache_dtype="int4"), "kv_cache_dtype must be one of"),
    ],
)
def test_bad_settings_are_refused_at_construction(
    qwen3_dir: Path, settings: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ModelRunner(qwen3_dir, max_total_tokens=64, **settings)


# ---- int8 KV cache ---------------------------------------------------------------------------

INT8_LOGPROB_TOLERANCE = 0.05  # max |log p| difference per token vs the full-precision cache


def test_int8_kv_logprobs_within_tolerance_of_full_precision(qwen3_dir: Path) -> None:
    prompt = SYSTEM + [100, 200, 7, 8, 9]
    with ModelRunner(qwen3_dir) as full, ModelRunner(qwen3_dir, kv_cache_dtype="int8") as int8:
        a, b = full.score(prompt), int8.score(prompt)
    diffs = [abs(x - y) for x, y in zip(a[1:], b[1:])]
    assert max(diffs) < INT8_LOGPROB_TOLERANCE, max(diffs)
    assert max(diffs) > 0  # the int8 path really ran


def test_int8_kv_greedy_agreement_on_the_bundled_model() -> None:
    prompts = ["ROMEO:", "JULIET: O Romeo, Romeo,", "HAMLET: To be, or not to be", "KING LEAR:"]
    greedy = SamplingParams(temperature=0, max_tokens=48)
    with ModelRunner() as full, ModelRunner(kv_cache_dtype="int8") as int8:
        a = [o.token_ids for o in full.generate_outputs(prompts, greedy)]
        b = [o.token_ids for o in int8.generate_outputs(prompts, greedy)]
    # Tokens agreeing before the first divergence, over all tokens (1.0: identical text). The
    # tiny model has near-ties that a 0.02 logprob nudge flips; measured 137/192 = 0.71.
    agree = sum(
        next((i for i, (x, y) in enumerate(zip(s, t)) if x != y), len(s)) for s, t in zip(a, b)
    )
    assert agree / sum(map(len, a)) >= 0.6


def test_int8_kv_unchanged_by_prefix_sharing_and_preemption(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, kv_cache_dtype="int8", **WORKLOAD) as shared:
        with_sharing = run_workload(shared)
    with ModelRunner(
        qwen3_dir, kv_cache_dtype="int8", page_size=4, enable_prefix_cache=False
    ) as plain:
        alone = [o.token_ids for o in plain.generate_outputs(PROMPTS, GREEDY)]
        assert plain.get_stats()["num_preemptions"] == 0
    assert with_sharing == alone


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_int8_kv_on_each_backend_that_supports_it(qwen3_dir: Path, backend: str) -> None:
    with ModelRunner(qwen3_dir, kv_cache_dtype="int8", attention_backend=backend, page_size=4) as r:
        outs = [o.token_ids for o in r.generate_outputs(PROMPTS[:2], GREEDY)]
    with ModelRunner(
        qwen3_dir, kv_cache_dtype="int8", attention_backend="reference", page_size=4
    ) as r:
        assert outs == [o.token_ids for o in r.generate_outputs(PROMPTS[:2], GREEDY)]


def test_int8_pool_holds_about_twice_the_tokens_of_bf16(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(capacity_module, "available_memory_bytes", lambda device: 64 << 20)
    pages = {}
    for kv in ("bfloat16", "int8"):
        with ModelRunner(kv_cache_dtype=kv, mem_fraction=0.5, max_running_requests=4096) as r:
            pages[kv] = r.get_stats()["kv_pages_total"]
    ratio = pages["int8"] / pages["bfloat16"]
    head_dim = 2 * 64 / (64 + 4)  # bf16 bytes / (int8 bytes + fp32 scale) per element row
    assert math.isclose(ratio, head_dim, rel_tol=0.02) and ratio > 1.8


# ---- token pruning ---------------------------------------------------------------------------

LONG = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)


def test_pruning_drops_tokens_frees_empty_pages_and_keeps_invariants(
    qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_SGL_LITE_CHECK_INVARIANTS", "1")
    settings = dict(page_size=2, enable_prefix_cache=False, max_total_tokens=512)
    with ModelRunner(qwen3_dir, pruning_ratio=0.9, min_tokens_after_pruning=8, **settings) as r:
        outs = r.generate_outputs(PROMPTS, LONG)
        stats = r.get_stats()
        assert all(len(o.token_ids) == 40 for o in outs)
        assert stats["num_pruned_tokens"] > 0 and stats["num_pruned_pages_freed"] > 0
        assert stats["attention_kv_read_fraction"] < 0.5
        assert stats["kv_pages_free"] == stats["kv_pages_total"]
    with ModelRunner(qwen3_dir, **settings) as r:  # the default never prunes
        r.generate_outputs(PROMPTS, LONG)
        assert r.get_stats()["num_pruned_tokens"] == 0


def test_pruning_never_changes_prefix_pages_shared_with_other_requests(qwen3_dir: Path) -> None:
    """A long request prunes; a short one sharing its cached prompt never gets past
    ``min_tokens_after_pruning``, so its output must be what it is without pruning."""
    long_prompt, short_prompt = SYSTEM + [1, 2, 3], SYSTEM + [4, 5]
    short = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    with ModelRunner(qwen3_dir, page_size=4) as plain:
        expected = plain.generate_outputs(short_prompt, short)[0].token_ids
    with ModelRunner(
        qwen3_dir, page_size=4, pruning_ratio=0.5, min_tokens_after_pruning=40
    ) as pruned:
        pruned.generate_outputs(long_prompt, LONG)
        assert pruned.get_stats()["num_pruned_tokens"] > 0
        out = pruned.generate_outputs(short_prompt, short)[0]
        assert out.num_cached_tokens > 0
        assert out.token_ids == expected


def test_pruning_survives_preemption(qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VIBE_SGL_LITE_CHECK_INVARIANTS", "1")
    with ModelRunner(
        qwen3_dir, page_size=2, max_total_tokens=96, pruning_ratio=0.8, min_tokens_after_pruning=8
    ) as r:
        outs = r.generate_outputs(PROMPTS, LONG)
        stats = r.get_stats()
        assert stats["num_preemptions"] > 0 and stats["num_pruned_tokens"] > 0
        assert all(len(o.token_ids) == 40 for o in outs)
        r.flush_cache()
        assert r.get_stats()["kv_pages_free"] == r.get_stats()["kv_pages_total"]


@pytest.mark.parametrize(
    "settings, match",
    [
        (dict(pruning_ratio=1.0), r"pruning_ratio must be in \[0, 1\)"),
        (dict(pruning_ratio=-0.1), r"pruning_ratio must be"),
        (dict(pruning_ratio=0.5, min_tokens_after_pruning=0), "min_tokens_after_pruning must be"),
    ],
)
def test_bad_pruning_settings(qwen3_dir: Path, settings: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ModelRunner(qwen3_dir, max_total_tokens=64, **settings)
