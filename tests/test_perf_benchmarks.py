"""``benchmarks/decode_step.py`` and ``benchmarks/latency.py`` at a tiny size: they run through
their ``main``, print one table row per batch size or rate, and their numbers obey what must
hold whatever the machine: the step's shares sum to 1, fractions of the machine's limits are
positive and not far above 1, a p99 is never below its p50, every request gets its tokens.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest

from tests.benchmark_scripts import load_benchmark

pytestmark = pytest.mark.integration


TINY_MODEL = [
    "--hidden", "64", "--layers", "2", "--heads", "4", "--kv-heads", "2",
    "--head-dim", "16", "--intermediate", "128", "--vocab", "512", "--threads", "1",
]  # fmt: skip


def table_rows(out: str, header_start: str) -> list[list[str]]:
    """The whitespace-split rows printed after the table header, up to the ``total`` line."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith(header_start))
    rows = []
    for line in lines[start + 1 :]:
        fields = line.split()
        if fields and fields[0][0].isdigit():
            rows.append(fields)
        elif rows:  # the first line after the rows ends the table
            break
    return rows


def test_decode_step_benchmark_smoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bench = load_benchmark(monkeypatch, "decode_step")
    argv = ["--batches", "1", "4", "--context", "16", "--steps", "3", "--warmup", "1"]
    report = bench.main(TINY_MODEL + argv + ["--plot", str(tmp_path / "step")])
    out = capsys.readouterr().out
    for name in ("step-tokens.png", "step-breakdown.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")

    # the baselines: transformers always, llama.cpp when installed, our ratio against each
    assert sorted(report.transformers) == [1, 4]
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    assert sorted(report.llama_cpp) == ([1, 4] if has_llama_cpp else [])
    assert has_llama_cpp or "llama.cpp: not installed" in out
    for row, result in zip(table_rows(out, "batch  ours tok/s"), report.results):
        assert int(row[0]) == result.batch and float(row[1]) == round(result.tokens_per_second, 1)
        hf_tokens = result.batch / report.transformers[result.batch]
        assert float(row[2]) == pytest.approx(hf_tokens, abs=0.06)
        assert float(row[3].rstrip("x")) == pytest.approx(
            result.tokens_per_second / hf_tokens, abs=0.006
        )
        assert (row[4] == "-") != has_llama_cpp

    assert "cpu:" in out and "native bf16:" in out and "limits at 1 thread(s)" in out
    assert report.limits.matmul_peak > 1e8 and report.limits.bandwidth > 1e8
    assert report.shape.hidden == 64 and report.shape_name == "resized"
    assert report.lm_head_params == 64 * 512
    assert [r.batch for r in report.results] == [1, 4]

    rows = table_rows(out, "batch")
    assert [int(row[0]) for row in rows] == [1, 4]
    for row, result in zip(rows, report.results):
        assert len(row) == 11  # batch, ms, tok/s, 4 shares, MFU, mm eff, weights bw, probe +
        printed_shares = [float(f.rstrip("%")) for f in row[3:7]]
        assert sum(printed_shares) == pytest.approx(100, abs=0.3)
        assert float(row[1]) == pytest.approx(result.step_seconds * 1e3, abs=0.01)

        assert result.step_seconds > 0 and result.probed_seconds > 0
        assert result.tokens_per_second == pytest.approx(result.batch / result.step_seconds)
        assert sum(result.shares.values()) == pytest.approx(1.0)
        assert all(share >= 0 for share in result.shares.values())
        assert result.shares["matmul"] > 0 and result.shares["attention"] > 0
        assert result.matmul_flops == 2 * report.linear_params * result.batch
        for fraction in (
            result.mfu(report.limits),
            result.matmul_efficiency(report.limits),
            result.weight_bandwidth(report.limits),
        ):
            assert 0 < fraction < 1.5
    assert report.results[1].matmul_flops == 4 * report.results[0].matmul_flops


def test_latency_benchmark_smoke(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_benchmark(monkeypatch, "latency")
    argv = ["--rates", "4", "16", "--num-requests", "4"]
    argv += ["--prompt-len", "8", "32", "--output-len", "4", "8"]
    report = bench.main(TINY_MODEL + argv)
    out = capsys.readouterr().out

    assert report.engine_threads == 1
    assert [r.rate for r in report.results] == [4.0, 16.0]
    rows = table_rows(out, "rate")
    assert [(float(row[0]), int(row[1])) for row in rows] == [(4.0, 4), (16.0, 4)]

    expected = bench.workload(4, (8, 32), (4, 8), vocab=512, seed=0)
    for result in report.results:
        assert result.num_requests == 4
        # ignore_eos: every request gets exactly the tokens it asked for
        assert [r.output_tokens for r in result.requests] == [i.output_len for i in expected]
        assert result.request_throughput > 0 and result.token_throughput > 0
        assert 0 < result.ttft(50) <= result.ttft(99)
        assert 0 < result.tpot(50) <= result.tpot(99)
        for r in result.requests:
            assert 0 < r.ttft <= r.latency


def test_percentile_is_nearest_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_benchmark(monkeypatch, "latency")
    values = list(range(1, 101))
    assert bench.percentile(values, 50) == 50
    assert bench.percentile(values, 99) == 99
    assert bench.percentile([3.0, 1.0, 2.0], 99) == 3.0
    assert math.isnan(bench.percentile([], 50))
