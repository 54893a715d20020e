"""The engine core's contracts: parameters checked at enqueue, streams that end early, the
invariant check, and settings refused rather than silently changed."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.config import FIELDS, EngineConfig
from vibe_sgl_lite.core.engine import CHECK_INVARIANTS_ENV

pytestmark = pytest.mark.integration


def test_params_changed_after_construction_fail_alone(qwen3_dir: Path) -> None:
    bad = SamplingParams(max_tokens=6)
    bad.top_p = 2.0
    good = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True)
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        outs = runner.generate_outputs(["hello", "world"], [bad, good])
        assert outs[0].finish_reason == "error" and "top_p" in (outs[0].error or "")
        assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == 6
        alone = runner.generate_outputs("hello", bad)[0]
        assert alone.finish_reason == "error" and "top_p must be" in (alone.error or "")


def test_params_changed_after_enqueue_do_not_reach_the_request(qwen3_dir: Path) -> None:
    params = SamplingParams(max_tokens=5, temperature=0, ignore_eos=True)
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        engine = runner.engine
        assert engine is not None
        req = engine.add_request("hello", params)
        params.max_tokens = 1
        while not req.is_finished:
            engine.step()
        assert req.num_output_tokens == 5


@pytest.mark.parametrize("chunked_prefill_size", [None, 4])
def test_closing_a_stream_early_frees_everything(
    qwen3_dir: Path, chunked_prefill_size: int | None
) -> None:
    with ModelRunner(
        qwen3_dir, max_total_tokens=256, page_size=4, chunked_prefill_size=chunked_prefill_size
    ) as runner:
        engine = runner.engine
        assert engine is not None
        it = runner.generate_stream("Once upon a time", max_tokens=50, ignore_eos=True)
        next(it)
        assert engine.has_unfinished()
        it.close()
        assert not engine.has_unfinished() and engine.outputs.num_open_streams == 0
        assert runner.flush_cache()
        stats = runner.get_stats()
        assert stats["kv_pages_free"] == stats["kv_pages_total"]
        # A request aborted while still waiting leaves nothing behind either.
        waiting = engine.add_request("hello", SamplingParams())
        engine.abort(waiting)
        assert waiting.finish_reason == "abort" and not engine.has_unfinished()
        assert engine.outputs.num_open_streams == 0


def test_invariant_check_runs_every_step_and_catches_a_leak(
    qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CHECK_INVARIANTS_ENV, "1")
    prompts = ["Once upon a time there was", "Once upon a time there lived", "hello"]
    # A small pool: prefix sharing, eviction and preemption all happen under the check.
    with ModelRunner(qwen3_dir, max_total_tokens=48, page_size=4) as runner:
        engine = runner.engine
        assert engine is not None and engine.check_invariants
        runner.generate_batch(prompts, max_tokens=12, ignore_eos=True, use_tqdm=False)
        assert runner.get_stats()["num_preemptions"] > 0
        engine.assert_invariants()
        engine.allocator.incref([next(iter(engine.cache.referenced_pages()))])  # a leak
        with pytest.raises(AssertionError, match="refcount"):
            engine.assert_invariants()


def test_max_model_len_beyond_the_model_or_the_pool_is_refused(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="max_model_len must be <= the model's"):
        ModelRunner(qwen3_dir, max_model_len=20000)
    with pytest.raises(ValueError, match="max_model_len must be <= the KV pool"):
        ModelRunner(qwen3_dir, max_total_tokens=64, max_model_len=128)
    with ModelRunner(qwen3_dir, max_total_tokens=64) as runner:  # unset: the pool's size
        assert runner.get_stats()["max_model_len"] == 64


def test_bad_devices_are_refused_before_loading() -> None:
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N', got 'gpu'"):
        EngineConfig(device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs CUDA"):
            EngineConfig(device="cuda")


def test_every_setting_is_a_runner_keyword(qwen3_dir: Path) -> None:
    signature = inspect.signature(ModelRunner)
    for name, f in FIELDS.items():
        assert signature.parameters[name].default == f.default
        assert f.metadata["help"], f"{name} has no help text"
    with pytest.raises(ValueError, match="unknown engine setting 'page_sise'"):
        ModelRunner(qwen3_dir, page_sise=8)
    with pytest.raises(ValueError, match="mem_fraction"):
        ModelRunner(qwen3_dir, mem_fraction=0)


def test_cached_and_evictable_pages(qwen3_dir: Path) -> None:
    """``num_cached_pages``: pages the tree references; ``num_evictable_pages``: those held by
    the tree alone. A running request's pages are cached but not evictable."""
    with ModelRunner(qwen3_dir, max_total_tokens=256, page_size=4) as runner:
        runner.generate("Once upon a time there was", max_tokens=6, ignore_eos=True)
        stats = runner.get_stats()
        assert stats["num_cached_pages"] > 0
        assert stats["num_evictable_pages"] == stats["num_cached_pages"]
        it = runner.generate_stream("Once upon a time there was", max_tokens=20, ignore_eos=True)
        next(it)
        stats = runner.get_stats()
        assert 0 <= stats["num_evictable_pages"] < stats["num_cached_pages"]
        it.close()
