"""The attention-backend contract (``kernels/backend.py``), checked for every registered backend.

Each backend is run on the same batches and compared with ``naive_attention`` below: one row at
a time, keys gathered slot by slot, softmax in float64. A new backend added to
``ATTENTION_BACKENDS`` is picked up here without editing this file.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch

from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.kernels import ATTENTION_BACKENDS, get_attention_backend

pytestmark = pytest.mark.kernels

BACKENDS = list(ATTENTION_BACKENDS)
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 3e-2}  # max abs error vs the float64 reference


@dataclass
class Case:
    batch: ForwardBatch
    q: torch.Tensor  # [T, Hq, D]
    k: torch.Tensor  # [T, Hkv, D]  this step's keys, not yet in the cache
    v: torch.Tensor
    k_cache: torch.Tensor  # [num_slots, Hkv, D]  holds the cached prefixes already
    v_cache: torch.Tensor


def make_case(
    rows: list[tuple[int, int]],
    *,
    page_size: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> Case:
    """``rows``: (cached prefix length, new tokens) per row; pages handed out shuffled."""
    gen = torch.Generator().manual_seed(seed)
    pages_needed = [-(-(p + n) // page_size) for p, n in rows]
    free = list(range(1, sum(pages_needed) + 3))
    random.Random(seed).shuffle(free)
    num_slots = (len(free) + 1) * page_size
    batch_rows = []
    for (prefix, new), n_pages in zip(rows, pages_needed):
        table, free = free[:n_pages], free[n_pages:]
        batch_rows.append(BatchRow(list(range(new)), prefix, table, sample=True))
    batch = ForwardBatch.build(batch_rows, page_size, torch.device("cpu"))

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    T = batch.num_tokens
    k_cache, v_cache = randn(num_slots, num_kv_heads, head_dim), randn(
        num_slots, num_kv_heads, head_dim
    )
    return Case(
        batch,
        randn(T, num_heads, head_dim),
        randn(T, num_kv_heads, head_dim),
        randn(T, num_kv_heads, head_dim),
        k_cache,
        v_cache,
    )


def naive_attention(case: Case, scale: float) -> torch.Tensor:
    """Store, then attend row by row in float64: the contract, written as plainly as possible."""
    b = case.batch
    k_cache, v_cache = case.k_cache.double().clone(), case.v_cache.double().clone()
    k_cache[b.slot_mapping] = case.k.double()
    v_cache[b.slot_mapping] = case.v.double()
    group = case.q.shape[1] // k_cache.shape[1]
    out = torch.zeros(case.q.shape, dtype=torch.float64)
    for r in range(b.num_seqs):
        start, q_len, kv_len = int(b.query_start_loc[r]), b.query_lens_cpu[r], b.seq_lens_cpu[r]
        slots = [
            int(b.page_table[r, j // b.page_size]) * b.page_size + j % b.page_size
            for j in range(kv_len)
        ]
        keys = k_cache[slots].repeat_interleave(group, dim=1)  # [L, Hq, D]
        values = v_cache[slots].repeat_interleave(group, dim=1)
        for i in range(q_len):
            pos = kv_len - q_len + i
            q = case.q[start + i].double()  # [Hq, D]
            scores = torch.einsum("hd,lhd->hl", q, keys[: pos + 1]) * scale
            out[start + i] = torch.einsum("hl,lhd->hd", scores.softmax(-1), values[: pos + 1])
    return out


def run_backend(name: str, case: Case, scale: float) -> torch.Tensor:
    backend = get_attention_backend(name)
    backend.prepare(case.batch)
    kv = (case.k_cache.clone(), case.v_cache.clone())
    return backend.forward(case.q, case.k, case.v, kv, case.batch, scale)


MIXED = [(0, 7), (5, 1), (16, 1), (13, 9), (0, 1), (31, 1), (3, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "page_size, heads, kv_heads, head_dim",
    [(16, 8, 4, 64), (1, 4, 4, 64), (5, 8, 1, 80), (4, 16, 2, 128)],
)
def test_mixed_batch_matches_naive_attention(
    backend: str, page_size: int, heads: int, kv_heads: int, head_dim: int
) -> None:
    """Decode and extend rows in one batch; prefixes empty, mid-page and page-aligned; GQA 1-8."""
    case = make_case(
        MIXED, page_size=page_size, num_heads=heads, num_kv_heads=kv_heads, head_dim=head_dim
    )
    out = run_backend(backend, case, head_dim**-0.5)
    torch.testing.assert_close(
        out.double(), naive_attention(case, head_dim**-0.5), atol=1e-4, rtol=0
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_within_tolerance(backend: str) -> None:
    case = make_case(
        MIXED, page_size=16, num_heads=8, num_kv_heads=2, head_dim=64, dtype=torch.bfloat16
    )
    out = run_backend(backend, case, 0.125)
    assert out.dtype == torch.bfloat16
    err = (out.double() - naive_attention(case, 0.125)).abs().max().item()
    assert err < TOLERANCE[torch.bfloat16], err


@pytest.mark.parametrize("backend", BACKENDS)
def test_cache_holds_the_new_keys_after_forward(backend: str) -> None:
    case = make_case(MIXED, page_size=16, num_heads=4, num_kv_heads=2, head_dim=64)
    attention = get_attention_backend(backend)
    attention.prepare(case.batch)
    k_cache, v_cache = case.k_cache.clone(), case.v_cache.clone()
    attention.forward(case.q, case.k, case.v, (k_cache, v_cache), case.batch, 0.125)
    assert torch.equal(k_cache[case.batch.slot_mapping], case.k)
    assert torch.equal(v_cache[case.batch.slot_mapping], case.v)
    untouched = torch.ones(k_cache.shape[0], dtype=torch.bool)
    untouched[case.batch.slot_mapping] = False
    assert torch.equal(k_cache[untouched], case.k_cache[untouched])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_row_reads_keys_another_row_stores_in_the_same_forward(backend: str) -> None:
    """In-batch prefix sharing: row 1's first page is row 0's, written in this very step.

    Row 0 prefills 8 tokens into pages [1, 2]; row 1 has a 4-token "cached" prefix that lives in
    page 1 (the prefix cache handed it over) and adds 3 tokens in page 3. A backend that reads
    before it stores for the whole batch sees stale zeros in page 1 and fails.
    """
    page_size, heads, kv_heads, dim = 4, 4, 2, 64
    rows = [BatchRow(list(range(8)), 0, [1, 2], True), BatchRow([0, 0, 0], 4, [1, 3], True)]
    batch = ForwardBatch.build(rows, page_size, torch.device("cpu"))
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(11, heads, dim, generator=gen)
    k, v = torch.randn(11, kv_heads, dim, generator=gen), torch.randn(
        11, kv_heads, dim, generator=gen
    )
    zeros = torch.zeros(5 * page_size, kv_heads, dim)
    case = Case(batch, q, k, v, zeros, zeros.clone())
    out = run_backend(backend, case, dim**-0.5)
    expected = naive_attention(case, dim**-0.5)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=0)
    # and the shared keys mattered: with page 1 left empty the answer would differ
    case_stale = Case(batch, q, k, v, zeros, zeros.clone())
    case_stale.batch = ForwardBatch.build(rows[1:], page_size, torch.device("cpu"))
    case_stale.q, case_stale.k, case_stale.v = q[8:], k[8:], v[8:]
    assert not torch.allclose(expected[8:], naive_attention(case_stale, dim**-0.5), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_prefix_that_fills_the_whole_page_table(backend: str) -> None:
    """Decode rows whose KV ends exactly on a page boundary, so every table entry is read."""
    case = make_case(
        [(15, 1), (31, 1), (7, 1)], page_size=8, num_heads=4, num_kv_heads=4, head_dim=64
    )
    out = run_backend(backend, case, 0.125)
    torch.testing.assert_close(out.double(), naive_attention(case, 0.125), atol=1e-4, rtol=0)


def test_unknown_backend_names_the_option_and_the_choices() -> None:
    with pytest.raises(ValueError, match=r"attention_backend must be one of .*torch.*triton"):
        get_attention_backend("flash")
