"""Examples that document an interface run as written (``examples/plugin.py``: the plugin
walk-through of docs/controlling_generation.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # a fresh interpreter each

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_plugin_example_ends_every_line_with_its_own_reason() -> None:
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "plugin.py")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    texts = [line.rsplit(" ", 1) for line in lines[:3]]  # repr(text), finish_reason
    assert len(lines) == 4 and all(reason == "end_of_line" for _, reason in texts)
    assert all(eval(text).endswith("\n") and "\n" not in eval(text)[:-1] for text, _ in texts)
    assert lines[3] == "{'one_line.finished': 3, 'one_line.errors': 0}"
    assert sum(1 for _ in (EXAMPLES / "plugin.py").open()) < 40


def run_example(name: str) -> subprocess.CompletedProcess[str]:
    """``python examples/NAME`` in a fresh interpreter; it must exit 0."""
    command = [sys.executable, str(EXAMPLES / name)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_attention_backends_example_gives_identical_tokens_with_every_backend() -> None:
    proc = run_example("attention_backends.py")
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0].strip() for line in lines[:3]] == [
        "cpu_paged",
        "torch_native",
        "CountingAttention",
    ]
    assert "identical greedy tokens: True" in lines
    assert int(lines[-1].rsplit(" ", 1)[1]) > 0


def test_sparse_attention_method_recipe_runs_and_reads_less() -> None:
    """docs/sparse_attention.md promises a new method in under 50 lines: this is that recipe."""
    path = EXAMPLES / "sparse_attention_method.py"
    proc = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fraction = float(proc.stdout.splitlines()[-1].rsplit(" ", 1)[1])
    assert 0.0 < fraction < 1.0
    source = path.read_text()
    method = source[source.index("class FirstAndRecentPages") : source.index("def main")]
    assert len(method.strip().splitlines()) < 50


@pytest.mark.distributed
def test_data_parallel_example_routes_a_shared_prompt_to_one_replica() -> None:
    """docs/scaling.md's example: three requests sharing a system prompt through the gateway
    (cache_aware) land on one replica, which serves the later two from its prefix cache."""
    from tests.gateway.conftest import require_gateway

    require_gateway()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "data_parallel.py")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 6 and lines[-1] == "serve exited with 0"
    served = sorted(int(line.split()[2]) for line in lines[3:5])
    assert served == [0, 3] and all(line.startswith("sglang worker") for line in lines[3:5])
    assert max(int(line.split()[4]) for line in lines[3:5]) > 0


@pytest.mark.distributed
def test_pipeline_parallel_example_matches_one_process() -> None:
    lines = run_example("pipeline_parallel.py").stdout.splitlines()
    assert "identical to one process: True" in lines
    share = float(lines[-1].rsplit(" ", 1)[1].rstrip("%")) / 100
    assert 0.0 < share < 1.0


def test_speculative_example_keeps_the_text_and_eagle_saves_forwards() -> None:
    lines = run_example("speculative.py").stdout.splitlines()
    assert len(lines) == 3 and all("identical text: True" in line for line in lines[1:])
    eagle = float(lines[2].split(":")[1].split()[0])
    assert lines[2].startswith("eagle") and eagle > 1.5  # tokens per target forward


def test_lora_example_serves_two_adapters_and_the_base_like_peft() -> None:
    lines = run_example("lora.py").stdout.splitlines()
    assert [line.split(" (")[0].strip() for line in lines] == ["base", "shout", "whisper"]
    assert all("(same as peft)" in line for line in lines)
    assert len({line.split("): ", 1)[1] for line in lines}) == 3  # each adapter changes the text


def test_quantization_example_keeps_a_row_identical_alone_and_batched() -> None:
    proc = run_example("quantization.py")
    lines = proc.stdout.splitlines()
    modes = [line.split(":")[0].strip() for line in lines if "perplexity" in line]
    assert modes == ["float32", "int8", "int8_weight_only", "int4"]
    assert "alone and in a batch of 4: identical True" in proc.stdout
    rows = [line.split() for line in lines if "perplexity" in line]
    perplexity = {row[0].rstrip(":"): float(row[2]) for row in rows}
    assert perplexity["int8"] < perplexity["float32"] * 1.01


def test_decode_graph_example_gives_the_eager_text() -> None:
    proc = run_example("decode_graph.py")
    lines = proc.stdout.splitlines()
    assert lines[-1] == "identical text: True"
    assert "compiled batch sizes [1]" in proc.stdout


def test_fp32_gemm_example_keeps_a_request_s_logprobs_in_any_batch() -> None:
    """MKL's line is not checked: whether its bits move with the batch depends on the CPU."""
    lines = run_example("fp32_gemm.py").stdout.splitlines()
    assert lines[0].startswith("our loop: same tokens True, bitwise-same logprobs True,")
    assert lines[1].startswith("MKL: same tokens ")
