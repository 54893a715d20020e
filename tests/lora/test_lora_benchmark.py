"""``benchmarks/lora.py`` at a tiny size: it runs, and its baseline is the same model.

The merged-one-at-a-time baseline is only a baseline if merging ``W + scale * B A`` into the
weights gives what serving the adapter gives: checked on logits."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.benchmark_scripts import load_benchmark
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.models.config import ModelConfig

pytestmark = pytest.mark.integration


def test_merged_baseline_equals_the_served_adapter(
    qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_benchmark(monkeypatch, "lora")
    adapter = bench.write_adapter(tmp_path / "a", ModelConfig.from_path(qwen3_dir), 4, seed=0)
    merged = bench.write_merged(qwen3_dir, adapter, tmp_path / "merged")
    ids = [5, 17, 42, 99, 7, 3]
    logits = {}
    with ModelRunner(qwen3_dir, lora_paths={"a": str(adapter)}, max_total_tokens=256) as r:
        assert r.engine is not None
        logits["served"] = r.engine.scorer.logits(ids, r.engine.loras.resolve("a"))
        logits["base"] = r.engine.scorer.logits(ids)
    with ModelRunner(merged, max_total_tokens=256) as r:
        assert r.engine is not None
        logits["merged"] = r.engine.scorer.logits(ids)
    torch.testing.assert_close(logits["served"], logits["merged"], atol=1e-4, rtol=0)
    assert (logits["served"] - logits["base"]).abs().max() > 1e-2


def test_benchmark_runs_at_a_tiny_size(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark(monkeypatch, "lora")
    argv = ["lora.py", "--hidden", "64", "--layers", "1", "--vocab", "256", "--requests", "4"]
    argv += ["--new-tokens", "2", "--repeats", "1", "--ranks", "4", "--adapters", "1", "2"]
    monkeypatch.setattr(sys, "argv", [*argv, "--threads", "1"])
    bench.main()
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("   4 ")]
    assert [row[1] for row in rows] == ["1", "2"] and all(float(row[3]) > 0 for row in rows)
    assert "swap-in, rank 4:" in out
