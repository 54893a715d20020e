"""``vibe-sgl-lite bench``: the workload, the CPU's bf16 detection, and a smoke run of each mode.

The smoke runs use a random Qwen3 far below ``--shape small`` (hidden 64, 2 layers, vocab 1000),
so every column runs in seconds; they check the report's shape and that every engine's greedy
outputs equal transformers ``generate``'s, not the speeds.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import re
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from vibe_sgl_lite.bench.report import BenchResult, bf16_report, cpu_bf16_flags
from vibe_sgl_lite.bench.transformers_baseline import run_transformers_continuous_batching
from vibe_sgl_lite.bench.workload import BenchRequest, make_workload
from vibe_sgl_lite.cli import build_parser, main
from vibe_sgl_lite.cli.bench import check_bench_flags, run_bench
from vibe_sgl_lite.cli.flags import values_of
from vibe_sgl_lite.config import EngineConfig

TINY = [
    *("--hidden 64 --layers 2 --heads 2 --kv-heads 1 --head-dim 32 --intermediate 128").split(),
    *("--vocab 1000 --threads 1 --max-total-tokens 4096").split(),
]
"""A random Qwen3 small enough that all columns together take seconds."""

MEASURED = r" +\d+\.\d\d s +\d+\.\d tok/s"
"""A measured column's time and rate, as the report prints them."""


def _bench_args(argv: list[str]) -> tuple[argparse.Namespace, EngineConfig]:
    """``argv``'s parsed flags and engine settings, as ``main`` derives them."""
    parser, engine_dests, _ = build_parser()
    args = parser.parse_args(["bench", *argv])
    return args, EngineConfig(**values_of(args, engine_dests))


# ---- the workload and the flags ------------------------------------------------------------


@pytest.mark.unit
def test_workload_is_seeded_and_within_the_ranges() -> None:
    work = make_workload(50, (3, 9), (2, 5), vocab=20, seed=7)
    assert work == make_workload(50, (3, 9), (2, 5), vocab=20, seed=7)
    assert work != make_workload(50, (3, 9), (2, 5), vocab=20, seed=8)
    assert {len(r.prompt) for r in work} == set(range(3, 10))  # 50 draws cover 7 lengths
    assert {r.max_tokens for r in work} == set(range(2, 6))
    assert all(1 <= t < 20 for r in work for t in r.prompt)  # 0 is EOS and padding


@pytest.mark.unit
@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prompt-len", "8"], "--prompt-len and --output-len need --equal-lengths"),
        (["--prompt-range", "9", "3"], "prompt_range must be MIN MAX"),
        (["--output-range", "0", "4"], "output_range must be MIN MAX"),
        (["--batch", "0"], "batch must be >= 1"),
        (["--vocab", "0"], "vocab must be >= 1"),
    ],
)
def test_bad_flags_are_refused(argv: list[str], message: str) -> None:
    args, _ = _bench_args(argv)
    with pytest.raises(ValueError, match=re.escape(message)):
        check_bench_flags(args)


@pytest.mark.unit
def test_cpu_bf16_detection(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx512f amx_bf16 amx_tile\n")
    assert cpu_bf16_flags(cpuinfo) == ("amx_bf16",)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2\n")
    assert cpu_bf16_flags(cpuinfo) == ()
    assert cpu_bf16_flags(tmp_path / "missing") is None
    assert bf16_report(("amx_bf16",), "bfloat16") == ["cpu: native bf16 (amx_bf16)"]
    assert len(bf16_report(("amx_bf16",), "float32")) == 1
    detection, warning = bf16_report((), "bfloat16")  # asked for, not native: warn, still run
    assert detection.startswith("cpu: no native bf16") and warning.startswith("warning: ")
    assert bf16_report(None, "float32") == ["cpu: native bf16 unknown (no /proc/cpuinfo)"]


@pytest.mark.unit
def test_the_old_names_still_resolve_from_cli_bench() -> None:
    """``cli/bench.py`` held the harness before ``vibe_sgl_lite.bench``; its names still work."""
    from vibe_sgl_lite.bench import harness, shapes, workload
    from vibe_sgl_lite.cli import bench

    assert bench.build_random_qwen3 is shapes.build_random_qwen3
    assert bench.Request is bench.BenchRequest is workload.BenchRequest
    assert bench.measure_throughput is harness.measure_throughput
    with pytest.raises(AttributeError, match="no_such_name"):
        bench.no_such_name


# ---- smoke runs ------------------------------------------------------------------------------


@pytest.mark.integration
def test_bench_reports_every_column(capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*TINY, "--num-prompts", "6", "--prompt-range", "8", "32", "--output-range", "8", "32"]
    assert main(["bench", *argv]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert re.fullmatch(r"model: random Qwen3 resized \(hidden 64, .*threads=1", lines[0])
    assert lines[1].startswith("cpu: ")
    workload = r"workload: 6 requests, prompts (\d+)\.\.(\d+) \(mean \d+\) tokens, outputs .*"
    match = re.fullmatch(workload, lines[2])
    assert match and 8 <= int(match[1]) <= int(match[2]) <= 32
    expected = [
        r"transformers generate \(batches of 6\):" + MEASURED + r" .* \(reference outputs\)",
        r"transformers continuous batching:" + MEASURED + r" .* identical greedy outputs: 6/6",
        r"llama\.cpp: (not installed.*|skipped \(.*\)|"
        + MEASURED
        + r" .* identical greedy outputs: 6/6)",  # installed: on the exported F32 GGUF
        r"vibe-sgl-lite:" + MEASURED + r" +identical greedy outputs: 6/6",
    ]
    assert len(lines) == 3 + len(expected), lines
    for pattern, line in zip(expected, lines[3:]):
        assert re.fullmatch(pattern, line), (pattern, line)


@pytest.mark.integration
def test_equal_lengths_mode_returns_its_results_as_data() -> None:
    argv = [*TINY, "--equal-lengths", "--num-prompts", "3", "--prompt-len", "8"]
    result = run_bench(*_bench_args([*argv, "--output-len", "4"]))
    assert isinstance(result, BenchResult)
    assert [(len(r.prompt), r.max_tokens) for r in result.requests] == [(8, 4)] * 3
    assert result.output_tokens == 12
    reference, continuous, llama_cpp, ours = result.columns
    assert reference.name == "transformers generate (batches of 3)"  # one batch: all prompts
    assert ours is result.ours and all(len(out) == 4 for out in ours.outputs)
    assert result.identical(ours) == result.identical(continuous) == 3
    if importlib.util.find_spec("llama_cpp") is None:
        assert llama_cpp.skipped is not None and llama_cpp.outputs == []
    else:  # the folder exported to an F32 GGUF: the same weights, the same greedy tokens
        assert result.identical(llama_cpp) == 3
    report = result.report()
    assert "workload: 3 requests, prompts 8 tokens, outputs 4 tokens (12 in all), seed 0" in report


@pytest.mark.integration
def test_bench_on_a_model_folder(qwen3_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--model", str(qwen3_dir), "--num-prompts", "3", "--threads", "1"]
    argv += ["--prompt-range", "4", "16", "--output-range", "2", "4", "--max-total-tokens", "1024"]
    assert main(["bench", *argv]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"model: {qwen3_dir.name}, ")
    # continuous batching and ours, and llama.cpp on the exported F32 GGUF when installed
    llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    assert out.count("identical greedy outputs: 3/3") == 2 + llama_cpp


class _FakeContinuousBatching:
    """A model whose continuous-batching manager needs at most ``fits`` tokens per step (as
    transformers' sizing refuses too large a step on a deep model) and echoes the prompt."""

    def __init__(self, fits: int) -> None:
        self.fits, self.tried, self.blocks = fits, [], []

    @contextlib.contextmanager
    def continuous_batching_context_manager(self, **kwargs: Any) -> Iterator[Any]:
        step = kwargs["continuous_batching_config"].max_batch_tokens
        self.tried.append(step)
        self.blocks.append(kwargs["continuous_batching_config"].num_blocks)
        if step > self.fits:
            raise MemoryError(f"Memory footprint for {step} tokens is more than available")
        results: list[Any] = []
        ids: list[str] = []

        def add_request(prompt: list[int], max_new_tokens: int, eos_token_id: int) -> str:
            result = SimpleNamespace(
                request_id=f"r{len(ids)}",
                error=None,
                is_finished=lambda: True,
                generated_tokens=prompt[:max_new_tokens],
            )
            ids.append(result.request_id)
            results.append(result)
            return result.request_id

        yield SimpleNamespace(
            add_request=add_request,
            get_result=lambda timeout: results.pop(0),
            is_running=lambda: True,
        )


@pytest.mark.unit
def test_continuous_batching_halves_its_step_until_its_cache_fits() -> None:
    requests = [BenchRequest([1, 2, 3, 4], 2), BenchRequest([5, 6, 7], 3)]
    fake = _FakeContinuousBatching(fits=1024)
    column = run_transformers_continuous_batching(
        fake, requests, EngineConfig(max_prefill_tokens=8192, max_total_tokens=65536)
    )
    assert fake.tried == [8192, 4096, 2048, 1024]
    assert column.skipped is None and column.outputs == [[1, 2], [5, 6, 7]]
    assert column.name == "transformers continuous batching (1024 tokens/step)"
    assert fake.blocks == [-(-13 // 256)] * 4  # the workload's 13 tokens, not 65,536
    too_small = _FakeContinuousBatching(fits=100)
    column = run_transformers_continuous_batching(too_small, requests, EngineConfig())
    assert too_small.tried[-1] == 256 and column.skipped.startswith("skipped (MemoryError")
