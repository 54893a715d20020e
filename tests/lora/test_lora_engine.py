"""LoRA through the engine: slots and the host LRU, the prefix cache keyed by adapter, chunked
prefill, preemption, the Triton path, an int8 base, and refused input.

Greedy references come from ``PeftModel`` (``conftest.py``): every setting here must leave each
request's output exactly what peft produces for its adapter alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.lora.conftest import greedy, lora_runner, make_adapter, peft_greedy, peft_logits
from tests.model_factory import build_llama, copy_with_json
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.models.worker import ModelWorker

pytestmark = pytest.mark.integration

NAMES: list[str | None] = ["qv", None, "all_rslora", "mlp_o_k", "qv", "all_rslora"]
SHARED = list(range(20, 44))  # 24 tokens: six pages of 4, shared by every prompt
PROMPTS = [SHARED + [100 + i, 3 + i] for i in range(len(NAMES))]
MAX_TOKENS = 6


@pytest.fixture(scope="module")
def expected(peft_model: Any) -> list[list[int]]:
    return [peft_greedy(peft_model, name, ids, MAX_TOKENS) for ids, name in zip(PROMPTS, NAMES)]


class RowSpy:
    """Wraps the worker's ``forward`` to record each step's rows."""

    def __init__(self, runner: ModelRunner) -> None:
        engine = runner.engine
        assert engine is not None and isinstance(engine.executor, ModelWorker)
        self.worker, self.steps = engine.executor, []
        self.forward = self.worker.forward
        self.worker.forward = self  # type: ignore[method-assign]
        engine.executor.execute = self  # type: ignore[method-assign]

    def __call__(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        self.steps.append(list(rows))
        return self.forward(rows)


def run(runner: ModelRunner) -> list[list[int]]:
    params = [greedy(n, MAX_TOKENS) for n in NAMES]
    return [o.token_ids for o in runner.generate_outputs(PROMPTS, params)]


def test_slots_bound_each_step_and_host_lru_rereads(
    qwen3_dir: Path, adapters: dict[str, Path], expected: list[list[int]]
) -> None:
    """Three adapters, two slots, a host cache of two: every step holds at most two distinct
    adapters, adapters are swapped in and out (and re-read from disk), output unchanged."""
    with lora_runner(qwen3_dir, adapters, max_loras_per_batch=2, max_loaded_loras=2) as runner:
        spy = RowSpy(runner)
        assert run(runner) == expected
        distinct = [len({r.lora for r in rows if r.lora is not None}) for rows in spy.steps]
        assert max(distinct) == 2
        lora = spy.worker.lora
        assert lora is not None and len(lora.host) <= 2 and lora.num_swaps >= 3


def test_same_prompt_under_another_adapter_never_reuses_its_cache(
    qwen3_dir: Path, adapters: dict[str, Path], peft_model: Any
) -> None:
    """The case a token-keyed cache gets wrong: the prompt under A, then under B (and then the
    base), must each equal that adapter alone; under A again it is a cache hit."""
    ids = PROMPTS[0]
    with lora_runner(qwen3_dir, adapters) as runner:
        outputs = {}
        for name in ["qv", "all_rslora", None, "qv"]:
            (out,) = runner.generate_outputs([ids], greedy(name, MAX_TOKENS))
            assert out.token_ids == peft_greedy(peft_model, name, ids, MAX_TOKENS), name
            outputs.setdefault(name, []).append(out.num_cached_tokens)
    assert outputs["qv"][0] == 0 and outputs["all_rslora"] == [0] and outputs[None] == [0]
    assert outputs["qv"][1] >= len(SHARED)  # the same adapter does share its pages


@pytest.mark.parametrize(
    "settings",
    [
        dict(chunked_prefill_size=5),
        dict(max_total_tokens=64, chunked_prefill_size=7),  # forces preemption
        dict(enable_prefix_cache=False, max_loras_per_batch=1),
    ],
    ids=["chunked", "preemption", "one-slot"],
)
def test_engine_settings_leave_greedy_output_unchanged(
    qwen3_dir: Path,
    adapters: dict[str, Path],
    expected: list[list[int]],
    settings: dict[str, Any],
) -> None:
    with lora_runner(qwen3_dir, adapters, **settings) as runner:
        assert run(runner) == expected
        if "max_total_tokens" in settings:
            assert runner.get_stats()["num_preemptions"] > 0


@pytest.mark.slow
def test_triton_backend_end_to_end(
    qwen3_dir: Path, adapters: dict[str, Path], expected: list[list[int]]
) -> None:
    """The Triton kernel in the engine (under the interpreter on CPU: two steps, three rows)."""
    with lora_runner(qwen3_dir, adapters, lora_backend="triton") as runner:
        outs = runner.generate_outputs(PROMPTS[:3], [greedy(n, 2) for n in NAMES[:3]])
        assert [o.token_ids for o in outs] == [e[:2] for e in expected[:3]]


@pytest.mark.parametrize(
    ("quantization", "tolerance"), [("int8_weight_only", 0.03), ("int8", 0.06)]
)
def test_int8_base_with_fp32_adapter(
    qwen3_dir: Path,
    adapters: dict[str, Path],
    peft_model: Any,
    quantization: str,
    tolerance: float,
) -> None:
    """int8 weights (and, for W8A8, int8 activations) under a float LoRA: close to peft's fp32
    logits (within int8's own error, larger when activations are rounded too), and the adapter
    still moves them as much as in fp32."""
    ids = PROMPTS[1]
    with lora_runner(qwen3_dir, adapters, quantization=quantization) as runner:
        engine = runner.engine
        assert engine is not None
        ours = {n: engine.scorer.logits(ids, engine.loras.resolve(n)) for n in (None, "all_rslora")}
    ref = {n: peft_logits(peft_model, n, ids) for n in (None, "all_rslora")}
    for name in ours:
        scale = ref[name].abs().max()
        assert (ours[name] - ref[name]).abs().max() / scale < tolerance, name
    delta, ref_delta = ours["all_rslora"] - ours[None], ref["all_rslora"] - ref[None]
    assert (delta - ref_delta).abs().max() / ref_delta.abs().max() < 0.1


def test_load_and_unload_at_run_time(qwen3_dir: Path, adapters: dict[str, Path]) -> None:
    with ModelRunner(qwen3_dir, enable_lora=True, max_total_tokens=1024) as runner:
        assert runner.lora_names == []
        with pytest.raises(ValueError, match="lora_name 'qv' is not loaded"):
            runner.generate([1, 2, 3], lora_name="qv", max_tokens=2)
        runner.load_lora("qv", adapters["qv"])
        with pytest.raises(ValueError, match="already loaded"):
            runner.load_lora("qv", adapters["qv"])
        first = runner.generate([1, 2, 3], lora_name="qv", max_tokens=4, temperature=0)
        engine = runner.engine
        assert engine is not None
        stream = runner.stream_deltas([1, 2, 3], lora_name="qv", max_tokens=4)
        next(stream)
        with pytest.raises(ValueError, match="used by 1 unfinished request"):
            runner.unload_lora("qv")
        stream.close()
        runner.unload_lora("qv")
        assert runner.lora_names == []
        runner.load_lora("qv", adapters["qv"])  # a new uid: nothing of the old one is reused
        assert runner.generate([1, 2, 3], lora_name="qv", max_tokens=4, temperature=0) == first


# ---- refused input ----------------------------------------------------------------------------


def test_lora_name_without_lora_enabled(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        with pytest.raises(ValueError, match="lora_name 'x' given, but LoRA is not enabled"):
            runner.generate([1, 2], lora_name="x")


def test_bad_adapters_are_refused_by_name(
    qwen3_dir: Path, adapters: dict[str, Path], tokenizer_dir: Path, tmp_path: Path
) -> None:
    other_base = build_llama(tmp_path / "llama", tokenizer_dir, hidden_size=32, head_dim=8)
    from peft import LoraConfig, get_peft_model

    from tests.model_factory import load_hf

    head = get_peft_model(load_hf(qwen3_dir), LoraConfig(r=4, target_modules=["lm_head"]))
    head.save_pretrained(str(tmp_path / "head"))
    cases = {
        str(tmp_path / "missing"): "is not a folder",
        str(
            copy_with_json(adapters["qv"], tmp_path / "big", "adapter_config.json", r=128)
        ): "r=128 is above max_lora_rank=64",
        str(tmp_path / "head"): "target module 'lm_head' is not supported",
        str(
            make_adapter(other_base, tmp_path / "other", 0, r=4, target_modules=["q_proj"])
        ): "another base",
        str(
            copy_with_json(adapters["qv"], tmp_path / "dora", "adapter_config.json", use_dora=True)
        ): "use_dora",
    }
    with ModelRunner(qwen3_dir, enable_lora=True, max_total_tokens=256) as runner:
        for path, message in cases.items():
            with pytest.raises(ValueError, match=message):
                runner.load_lora("bad", path)
        assert runner.lora_names == []
    with pytest.raises(ValueError, match="lora_paths entries"):
        ModelRunner(qwen3_dir, lora_paths={"": "x"})
    with pytest.raises(ValueError, match="max_lora_rank must be an integer >= 1"):
        ModelRunner(qwen3_dir, lora_paths={}, max_lora_rank=0)


def test_cli_generate_under_an_adapter(
    qwen3_dir: Path, adapters: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from vibe_sgl_lite.cli import main

    flags = ["--max-tokens", "5", "--temperature", "0", "--max-total-tokens", "256"]
    paths = [f"qv={adapters['qv']}", f"rs={adapters['all_rslora']}"]
    args = ["generate", "--model", str(qwen3_dir), "Once upon", *flags, "--lora-name", "rs"]
    assert main([*args, "--lora-paths", *paths]) == 0
    printed = capsys.readouterr().out
    with lora_runner(qwen3_dir, adapters) as runner:
        expected = runner.generate("Once upon", max_tokens=5, temperature=0, lora_name="all_rslora")
        base = runner.generate("Once upon", max_tokens=5, temperature=0)
    assert printed == "Once upon" + expected + "\n" and expected != base


def test_lora_with_speculative_decoding_or_pipeline_stages_is_refused(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="speculative_algorithm='ngram' yet"):
        ModelRunner(qwen3_dir, enable_lora=True, speculative_algorithm="ngram")
    with pytest.raises(ValueError, match="pipeline parallelism yet \\(pp_size=2\\)"):
        ModelRunner(qwen3_dir, lora_paths={}, pp_size=2)
