"""``kernels/cpu_paged``: decode and extend attention read in place from the paged pool.

Both functions are compared with a plain torch reference that gathers each row's keys through
its page table and runs a masked softmax in fp64. Pages are shuffled, rows end mid-page, and page
size, GQA ratio, head_dim and dtype vary.
"""

from __future__ import annotations

import math

import pytest
import torch

from vibe_sgl_lite.kernels.cpu_paged import (
    kernel_op,
    paged_decode_attention,
    paged_extend_attention,
)

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def make_batch(
    q_lens: list[int],
    prefix_lens: list[int],
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    dtype: torch.dtype,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random q and pool; each row's pages drawn from a shuffled pool (page 0 left unused)."""
    g = torch.Generator().manual_seed(seed)
    seq_lens = [p + n for p, n in zip(prefix_lens, q_lens)]
    pages_per_row = [math.ceil(n / page_size) for n in seq_lens]
    num_pages = sum(pages_per_row) + 3  # a few spare pages the table never points at
    order = (torch.randperm(num_pages - 1, generator=g) + 1).tolist()
    page_table = torch.zeros(len(q_lens), max(pages_per_row), dtype=torch.int64)
    for r, n in enumerate(pages_per_row):
        page_table[r, :n] = torch.tensor(order[:n])
        order = order[n:]
    shape = (num_pages * page_size, num_kv_heads, head_dim)
    return {
        "q": torch.randn(sum(q_lens), num_q_heads, head_dim, generator=g).to(dtype),
        "k_cache": torch.randn(shape, generator=g).to(dtype),
        "v_cache": torch.randn(shape, generator=g).to(dtype),
        "query_start_loc": torch.tensor([0] + q_lens).cumsum(0),
        "seq_lens": torch.tensor(seq_lens),
        "page_table": page_table,
    }


def reference(b: dict[str, torch.Tensor], page_size: int, scale: float) -> torch.Tensor:
    """Row by row: gather keys 0..L-1 through the page table, causal softmax, in fp64."""
    q, k_cache, v_cache = b["q"].double(), b["k_cache"].double(), b["v_cache"].double()
    group = q.shape[1] // k_cache.shape[1]
    out = torch.zeros_like(q)
    for r in range(len(b["seq_lens"])):
        start, end = int(b["query_start_loc"][r]), int(b["query_start_loc"][r + 1])
        kv_len, q_len = int(b["seq_lens"][r]), end - start
        pos = torch.arange(kv_len)
        slots = b["page_table"][r, pos // page_size] * page_size + pos % page_size
        k = k_cache[slots].repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_cache[slots].repeat_interleave(group, dim=1)
        scores = torch.einsum("qhd,khd->hqk", q[start:end], k) * scale
        q_pos = kv_len - q_len + torch.arange(q_len)
        scores.masked_fill_(pos[None, None, :] > q_pos[None, :, None], float("-inf"))
        out[start:end] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
    return out


SHAPES = [  # (num_q_heads, num_kv_heads, head_dim): GQA 1, 2, 8; head_dim 64, 128, 80
    (4, 4, 64),
    (16, 8, 128),
    (8, 1, 80),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 16, 5])
@pytest.mark.parametrize("heads", SHAPES)
def test_decode_matches_reference(
    heads: tuple[int, int, int], page_size: int, dtype: torch.dtype
) -> None:
    hq, hkv, d = heads
    # Context lengths end mid-page, on a page boundary, and at 1 (a first decode of 1 token).
    prefix_lens = [0, 6, 31, 47, 100]
    b = make_batch([1] * len(prefix_lens), prefix_lens, hq, hkv, d, page_size, dtype)
    scale = d**-0.5
    out = torch.full_like(b["q"], float("nan"))
    rows = torch.arange(len(prefix_lens))
    paged_decode_attention(
        b["q"], b["k_cache"], b["v_cache"], out, rows, b["query_start_loc"], b["seq_lens"],
        b["page_table"], page_size, scale,
    )  # fmt: skip
    expected = reference(b, page_size, scale)
    torch.testing.assert_close(out.double(), expected, atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 16, 5])
@pytest.mark.parametrize("heads", SHAPES)
def test_extend_matches_reference(
    heads: tuple[int, int, int], page_size: int, dtype: torch.dtype
) -> None:
    hq, hkv, d = heads
    # A fresh prompt (empty prefix), a chunk over a mid-page prefix, a single token, and a
    # chunk longer than the kernel's 16-query chunk that ends mid-page.
    q_lens, prefix_lens = [7, 20, 1, 37], [0, 13, 9, 40]
    b = make_batch(q_lens, prefix_lens, hq, hkv, d, page_size, dtype, seed=1)
    scale = d**-0.5
    out = torch.full_like(b["q"], float("nan"))
    rows = torch.arange(len(q_lens))
    paged_extend_attention(
        b["q"], b["k_cache"], b["v_cache"], out, rows, b["query_start_loc"], b["seq_lens"],
        b["page_table"], page_size, scale, max_query_len=max(q_lens),
    )  # fmt: skip
    expected = reference(b, page_size, scale)
    torch.testing.assert_close(out.double(), expected, atol=TOL[dtype], rtol=TOL[dtype])


def test_only_the_given_rows_are_written() -> None:
    """A mixed batch: decode rows and extend rows each fill their own tokens of ``out``."""
    q_lens, prefix_lens = [1, 9, 1, 4], [20, 3, 0, 17]
    b = make_batch(q_lens, prefix_lens, 8, 2, 64, 16, torch.float32, seed=2)
    out = torch.full_like(b["q"], float("nan"))
    args = (b["query_start_loc"], b["seq_lens"], b["page_table"], 16, 0.125)
    paged_decode_attention(b["q"], b["k_cache"], b["v_cache"], out, torch.tensor([0, 2]), *args)
    assert out[1:10].isnan().all() and out[11:].isnan().all()  # extend rows untouched
    paged_extend_attention(
        b["q"], b["k_cache"], b["v_cache"], out, torch.tensor([1, 3]), *args, max_query_len=9
    )
    torch.testing.assert_close(out.double(), reference(b, 16, 0.125), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_many_rows_and_threads(num_threads: int) -> None:
    """Enough rows that a work item spans all kv heads (the kernel's other partitioning)."""
    prefix_lens = list(range(3, 3 + 7 * 24, 7))
    b = make_batch([1] * len(prefix_lens), prefix_lens, 16, 8, 64, 16, torch.float32, seed=3)
    out = torch.empty_like(b["q"])
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        paged_decode_attention(
            b["q"], b["k_cache"], b["v_cache"], out, torch.arange(len(prefix_lens)),
            b["query_start_loc"], b["seq_lens"], b["page_table"], 16, 0.125,
        )  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    torch.testing.assert_close(out.double(), reference(b, 16, 0.125), atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("page_size", [1, 5])
def test_kernel_handles_extend_rows(page_size: int, dtype: torch.dtype) -> None:
    """The C++ kernel itself is causal over several queries (extend uses SDPA, but may not)."""
    q_lens, prefix_lens = [7, 20, 1, 37], [0, 13, 9, 40]
    b = make_batch(q_lens, prefix_lens, 8, 2, 80, page_size, dtype, seed=4)
    out = torch.full_like(b["q"], float("nan"))
    kernel_op()(
        b["q"], b["k_cache"], b["v_cache"], out, torch.arange(len(q_lens)),
        b["query_start_loc"], b["seq_lens"], b["page_table"], page_size, 0.1, max(q_lens),
    )  # fmt: skip
    torch.testing.assert_close(
        out.double(), reference(b, page_size, 0.1), atol=TOL[dtype], rtol=TOL[dtype]
    )
