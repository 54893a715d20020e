"""Decode graphs (``models/decode_graph.py``): the same greedy tokens as transformers and as the
eager engine, through buckets with padding rows, and clear refusals.

Every runner here has ``enable_torch_compile=True`` on a tiny random model that transformers
wrote. Three prompts with different ``max_tokens`` make the decode batch shrink 3 -> 2 -> 1, so
the steps replay buckets 4 (one padding row), 2 and 1; a fourth request arriving later adds
prefill rows to a step, which runs eagerly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from tests.model_factory import build_llama, build_qwen3_moe, hf_greedy, load_hf
from tests.models.test_gguf import write_gguf
from tests.server.conftest import serve
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.cli import main
from vibe_sgl_lite.models.decode_graph import DecodeGraphRunner, capture_sizes
from vibe_sgl_lite.models.worker import ModelWorker

pytestmark = pytest.mark.slow  # each bucket compiles with inductor (seconds)

POOL = dict(max_total_tokens=512)  # one pool shape: the runners of this file share compiled graphs
PROMPTS = [[5, 17, 42, 7, 99, 3], [11, 12], [200, 201, 202, 203, 204, 205, 206, 207, 208]]
MAX_TOKENS = [14, 9, 5]


def graphs_of(runner: ModelRunner) -> DecodeGraphRunner:
    worker = runner.engine.executor
    assert isinstance(worker, ModelWorker) and worker.graphs is not None
    return worker.graphs


def greedy(runner: ModelRunner, prompts: list[list[int]], max_tokens: list[int]) -> list[list[int]]:
    params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
    return [o.token_ids for o in runner.generate_outputs(prompts, params)]


def test_capture_sizes_are_powers_of_two_then_the_limit() -> None:
    assert capture_sizes(1) == [1]
    assert capture_sizes(8) == [1, 2, 4, 8]
    assert capture_sizes(12) == [1, 2, 4, 8, 12]


def test_compiled_decode_matches_transformers_and_eager(qwen3_dir: Path) -> None:
    hf = load_hf(qwen3_dir)
    expected = [hf_greedy(hf, p, n) for p, n in zip(PROMPTS, MAX_TOKENS)]
    with ModelRunner(
        qwen3_dir, enable_torch_compile=True, torch_compile_max_bs=4, **POOL
    ) as runner:
        assert greedy(runner, PROMPTS, MAX_TOKENS) == expected
        graphs = graphs_of(runner)
        assert graphs.failure is None
        assert sorted(graphs.capture_seconds) == [1, 2, 4]
        # Replayed again with other rows in the same buckets: the static batch is refilled.
        again = [PROMPTS[2], PROMPTS[0]]
        assert greedy(runner, again, [6, 6]) == [hf_greedy(hf, p, 6) for p in again]
    with ModelRunner(qwen3_dir, **POOL) as eager:
        assert greedy(eager, PROMPTS, MAX_TOKENS) == expected


def test_batches_above_the_largest_bucket_and_mixed_steps_run_eagerly(qwen3_dir: Path) -> None:
    """Four requests, the fourth arriving while the first three decode: steps of 4 and 3 rows
    and steps with a prompt in them run eagerly, the rest replay buckets 2 and 1."""
    hf = load_hf(qwen3_dir)
    prompts = [*PROMPTS, [30, 31, 32, 33]]
    max_tokens = [*MAX_TOKENS, 8]
    expected = [hf_greedy(hf, p, n) for p, n in zip(prompts, max_tokens)]
    compiled = ModelRunner(qwen3_dir, enable_torch_compile=True, torch_compile_max_bs=2, **POOL)
    with compiled as runner:
        assert greedy(runner, prompts[:3], max_tokens[:3]) == expected[:3]
        params = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in max_tokens]
        engine = runner.engine
        requests = [engine.add_request(p, sp) for p, sp in zip(prompts[:3], params)]
        engine.step()  # the three prompts
        engine.step()  # a decode step of 3 rows: above the largest bucket
        requests.append(engine.add_request(prompts[3], params[3]))
        while engine.has_unfinished():
            engine.step()
        assert [r.output_ids for r in requests] == expected
        assert sorted(graphs_of(runner).capture_seconds) == [1, 2]


def test_w8a8_int8_compiled_step_is_the_eager_step_up_to_rounding(qwen3_dir: Path) -> None:
    """The W8A8 kernel is an opaque op in the graph. The fused norm may round a last bit
    differently, which can move one activation across an int8 rounding boundary: so the
    compiled step's logits equal eager's up to such steps, not bitwise."""
    assert_compiled_step_is_eager_up_to_rounding(qwen3_dir, "int8")


def test_gguf_blocks_compiled_step_is_the_eager_step_up_to_rounding(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """A GGUF file's Q4_1 blocks (``GGUFLinear``) are an opaque op in the graph too; their
    activations are rounded to int8 as W8A8's are, so the same bound holds."""
    hf_dir = build_llama(tmp_path / "hf", tokenizer_dir)
    path = write_gguf(hf_dir, tmp_path / "q4_1.gguf", "llama", storage="Q4_1")
    assert_compiled_step_is_eager_up_to_rounding(path, "int4")


def assert_compiled_step_is_eager_up_to_rounding(model: Path, quantization: str) -> None:
    """One decode step after a prefill, replayed from its graph and run eagerly: logits within
    5% of their largest (int8 activation rounding of a last-bit difference), one bucket."""
    compiled = ModelRunner(model, quantization=quantization, enable_torch_compile=True, **POOL)
    with compiled as runner:
        worker = runner.engine.executor
        assert isinstance(worker, ModelWorker) and worker.graphs is not None
        prompt = PROMPTS[0]
        worker.forward([BatchRow(token_ids=prompt, start_pos=0, page_table=[0], sample=True)])
        step = [BatchRow(token_ids=[7], start_pos=len(prompt), page_table=[0], sample=True)]
        graphs, worker.graphs = worker.graphs, None
        eager = worker.forward(step)
        worker.graphs = graphs
        replayed = worker.forward(step)
        assert graphs.failure is None and sorted(graphs.capture_seconds) == [1]
        torch.testing.assert_close(replayed, eager, rtol=0.0, atol=0.05 * eager.abs().max().item())


def test_padding_rows_write_only_the_scratch_page(qwen3_dir: Path) -> None:
    """A replay of bucket 4 with 3 rows leaves every page no request holds as it was."""
    with ModelRunner(
        qwen3_dir, enable_torch_compile=True, torch_compile_max_bs=4, **POOL
    ) as runner:
        worker = runner.engine.executor
        assert isinstance(worker, ModelWorker)
        pool = worker.kv_pool
        assert pool.num_pages == runner.engine.allocator.num_pages + 1
        scratch = runner.engine.allocator.num_pages
        for k in pool.k:
            k[scratch] = 7.0  # a sentinel the padding row's K (of token 0) overwrites
        before = [k.clone() for k in pool.k]
        greedy(runner, PROMPTS[:3], [3, 3, 3])
        assert sorted(graphs_of(runner).capture_seconds) == [4]
        touched = {
            page
            for page in range(pool.num_pages)
            if any((k[page] != b[page]).any() for k, b in zip(pool.k, before))
        }
        assert scratch in touched  # the padding row of bucket 4 wrote there
        used_pages = 3  # one page of 16 tokens per prompt of <= 12 tokens
        assert len(touched - {scratch}) == used_pages


def test_a_model_that_cannot_compile_falls_back_to_eager(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """A mixture of experts routes tokens with data-dependent shapes: no single graph."""
    model_dir = build_qwen3_moe(tmp_path / "moe", tokenizer_dir)
    hf = load_hf(model_dir)
    expected = [hf_greedy(hf, p, n) for p, n in zip(PROMPTS[:2], MAX_TOKENS[:2])]
    with ModelRunner(model_dir, enable_torch_compile=True, **POOL) as runner:
        assert greedy(runner, PROMPTS[:2], MAX_TOKENS[:2]) == expected
        graphs = graphs_of(runner)
        if graphs.failure is None:  # a later torch may trace it; then it must have replayed
            assert graphs.capture_seconds
        else:
            assert not graphs.capture_seconds


def test_cli_and_server_take_the_compile_settings(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``generate --enable-torch-compile`` prints the eager text; three concurrent requests to
    a compiled server (one decode batch of 3: bucket 4) get the eager completions."""
    prompts = ["Once upon a time", "The quick brown fox", "def forward(self, x):"]
    with ModelRunner(qwen3_dir, max_total_tokens=512) as eager:
        expected = [eager.generate(p, max_tokens=8, temperature=0) for p in prompts]
    flags = ["--temperature", "0", "--max-tokens", "8", "--max-total-tokens", "512"]
    args = ["generate", "--model", str(qwen3_dir), prompts[0], *flags, "--enable-torch-compile"]
    assert main(args) == 0
    assert capsys.readouterr().out == prompts[0] + expected[0] + "\n"
    compiled = ModelRunner(qwen3_dir, max_total_tokens=512, enable_torch_compile=True)
    with compiled, serve(compiled) as live:
        client = live.client()
        with ThreadPoolExecutor(3) as pool:
            answers = pool.map(
                lambda p: client.completions.create(
                    model="tiny", prompt=p, max_tokens=8, temperature=0
                ),
                prompts,
            )
        assert [a.choices[0].text for a in answers] == expected
        assert graphs_of(compiled).capture_seconds


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        (dict(enable_torch_compile=True, torch_compile_max_bs=0), "torch_compile_max_bs"),
        (dict(enable_cuda_graph=True, cuda_graph_max_bs=513), "cuda_graph_max_bs"),
        (dict(enable_torch_compile="yes"), "enable_torch_compile"),
        (dict(enable_torch_compile=True, tp_size=2), "enable_torch_compile"),
        (dict(enable_torch_compile=True, enable_lora=True), "enable_torch_compile"),
        (
            dict(enable_torch_compile=True, attention_method="streaming"),
            "enable_torch_compile",
        ),
        (
            dict(enable_torch_compile=True, attention_backend="torch_native"),
            "enable_torch_compile",
        ),
    ],
)
def test_bad_graph_settings_are_refused_by_name(
    qwen3_dir: Path, settings: dict[str, object], field: str
) -> None:
    with pytest.raises(ValueError, match=field):
        ModelRunner(qwen3_dir, **settings)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graphs_match_eager_on_gpu(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, device="cuda", dtype="float32") as eager:
        expected = greedy(eager, PROMPTS, MAX_TOKENS)
    with ModelRunner(qwen3_dir, device="cuda", enable_cuda_graph=True) as runner:
        assert greedy(runner, PROMPTS, MAX_TOKENS) == expected
        assert sorted(graphs_of(runner).capture_seconds) == [1, 2, 4]
