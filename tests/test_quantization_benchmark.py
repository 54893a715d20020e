"""``benchmarks/quantization.py`` on a tiny model: it runs through its ``main``, prints one row
per weights kind, and its numbers obey what must hold whatever the machine: every speed is
positive, the fp32 row is 1.00x itself, llama.cpp's cells are filled exactly when
``llama-cpp-python`` is installed, and then, on the same float32 weights, llama.cpp's greedy
tokens are ours.

The tiny Qwen3 (hidden 64, FFN 128, head_dim 16, vocab 384) suits every mode: each matrix row
is 64 or 128 long, a multiple of 32, so int4's groups and the Q8_0/Q4_0 exports need no
padding or fallback.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark
from tests.model_factory import build_qwen3

pytestmark = pytest.mark.integration

NEW_TOKENS = 8


def test_quantization_benchmark_smoke(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    tokenizer_dir: Path,
) -> None:
    bench = load_benchmark(monkeypatch, "quantization")
    model = build_qwen3(tmp_path / "m", tokenizer_dir)
    argv = ["--model", str(model), "--new-tokens", str(NEW_TOKENS), "--prompt-len", "8"]
    report = bench.main(argv + ["--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out

    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    assert report.llama_cpp_installed == has_llama_cpp
    assert has_llama_cpp or "llama.cpp: not installed" in out
    assert "cpu:" in out and "torch threads: 1" in out and "date:" in out
    [result] = report.models
    assert [r.weights for r in result.rows] == ["fp32", "int8", "int8_weight_only", "int4"]

    lines = out.splitlines()
    start = lines.index(bench.TABLE_HEADER)
    printed = [line.split() for line in lines[start + 1 : start + 5]]
    for row, cells in zip(result.rows, printed):
        assert cells[0] == row.weights
        assert row.ours.tokens_per_second > 0 and len(row.ours.token_ids) == NEW_TOKENS
        assert float(cells[1]) == round(row.ours.tokens_per_second, 1)
        assert float(cells[2]) == round(result.speedup(row.weights), 2)
        if has_llama_cpp:
            assert row.llama_cpp is not None, row.llama_cpp_weights
            assert row.llama_cpp.tokens_per_second > 0
            assert float(cells[4]) == round(row.ratio, 2)
            assert cells[5] == f"{row.same_tokens}/{NEW_TOKENS}"
        else:
            assert row.llama_cpp is None and cells[3:] == ["-", "-", "-"]
    assert printed[0][2] == "1.00" and result.speedup("fp32") == 1.0

    fp32 = result.row("fp32")
    if has_llama_cpp:  # same float32 weights, both greedy: the same tokens
        assert fp32.llama_cpp_weights.startswith("exported F32")
        assert fp32.llama_cpp.token_ids == fp32.ours.token_ids
        assert fp32.same_tokens == NEW_TOKENS
