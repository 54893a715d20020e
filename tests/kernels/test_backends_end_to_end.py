"""Every attention backend, through ``ModelRunner``, gives transformers' greedy tokens.

The workload puts prefix-cache hits (a shared system prompt, warmed first), chunked prefill
(chunks of 7 tokens over pages of 4) and preemption (a 64-token pool) into the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.model_factory import build_qwen3, hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.kernels import ATTENTION_BACKENDS

pytestmark = [pytest.mark.kernels, pytest.mark.integration]

SYSTEM = list(range(10, 40))
PROMPTS = [SYSTEM + [100 + i, 200 + i, 7 + i] for i in range(4)] + [[300, 301, 302, 303, 304]]
MAX_NEW = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(qwen3_dir: Path) -> list[list[int]]:
    hf = load_hf(qwen3_dir)
    return [hf_greedy(hf, p, MAX_NEW) for p in PROMPTS]


@pytest.mark.parametrize("backend", list(ATTENTION_BACKENDS))
def test_greedy_equals_transformers_with_cache_hits_chunking_and_preemption(
    qwen3_dir: Path, reference: list[list[int]], backend: str
) -> None:
    with ModelRunner(
        qwen3_dir,
        attention_backend=backend,
        page_size=4,
        max_total_tokens=64,
        chunked_prefill_size=7,
    ) as runner:
        runner.generate_outputs(PROMPTS[0], GREEDY)  # warm the cache with the system prompt
        outs = runner.generate_outputs(PROMPTS, GREEDY)
        assert [o.token_ids for o in outs] == reference
        stats = runner.get_stats()
        assert stats["num_preemptions"] > 0
        assert stats["num_cached_tokens"] > 0


@pytest.mark.parametrize("backend", list(ATTENTION_BACKENDS))
def test_greedy_equals_transformers_with_head_dim_80_and_odd_pages(
    tokenizer_dir: Path, tmp_path: Path, backend: str
) -> None:
    """A head_dim that is not a power of two and pages of 3 tokens, GQA ratio 4."""
    model = build_qwen3(
        tmp_path, tokenizer_dir, num_attention_heads=4, num_key_value_heads=1, head_dim=80
    )
    hf = load_hf(model)
    prompts = PROMPTS[:2]
    with ModelRunner(model, attention_backend=backend, page_size=3, max_total_tokens=256) as r:
        assert [o.token_ids for o in r.generate_outputs(prompts, GREEDY)] == [
            hf_greedy(hf, p, MAX_NEW) for p in prompts
        ]


def test_unknown_backend_is_refused_at_construction(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        ModelRunner(qwen3_dir, attention_backend="flash", max_total_tokens=64)


def test_triton_without_triton_installed_is_refused_at_construction(
    qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(sys.modules):
        if name == "triton" or name.startswith(("triton.", "vibe_sgl_lite.kernels.triton")):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "triton", None)  # "import triton" now raises ImportError
    with pytest.raises(ValueError, match="attention_backend='triton' needs the triton package"):
        ModelRunner(qwen3_dir, attention_backend="triton", max_total_tokens=64)


def test_triton_refuses_a_head_dim_it_cannot_run(tokenizer_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("triton")
    model = build_qwen3(tmp_path, tokenizer_dir, head_dim=512)
    with pytest.raises(ValueError, match="head_dim"):
        ModelRunner(model, attention_backend="triton", max_total_tokens=64)
