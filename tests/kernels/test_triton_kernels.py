"""The Triton kernels (``vibe_sgl_lite.kernels.triton``) against a plain-torch reference.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``, chosen before
``triton`` is imported), so sizes stay small. The reference gathers each row's keys slot by slot
through the page table and does the softmax in float64.

Every cache slot that no row owns is NaN (for int8 caches: its scale is NaN). A kernel that reads
past a row's ``seq_len``, follows a padding page-table entry, or lets a masked key leak into
``p @ V`` therefore produces NaN, which every comparison catches.

Tolerances (max abs error vs the float64 reference): float32 1e-4; bfloat16 and float16 2e-2
plus 2e-2 relative (inputs, ``p`` and the output are rounded to 16 bits).
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton

from dataclasses import dataclass, replace

import pytest
import torch

from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.kernels.triton import (
    paged_decode_attention,
    paged_extend_attention,
    store_kv,
)
from vibe_sgl_lite.kernels.triton.backend import TritonPagedAttention
from vibe_sgl_lite.kernels.triton.decode import MAX_SPLITS, default_num_splits
from vibe_sgl_lite.kernels.triton.decode_plan import SplitScratch
from vibe_sgl_lite.kernels.triton.store import MIN_SCALE

pytestmark = pytest.mark.kernels

# The interpreter runs on host tensors; compiled kernels (TRITON_INTERPRET=0) need a GPU.
DEVICE = torch.device("cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda")
F32, BF16, F16 = torch.float32, torch.bfloat16, torch.float16


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Compare with the tolerance of ``actual``'s dtype (module docstring); NaN always fails."""
    if actual.dtype == F32:
        atol, rtol = 1e-4, 0.0
    else:
        atol, rtol = 2e-2, 2e-2
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol)


# --------------------------------------------------------------------------------------------
# Test batches and the reference.
# --------------------------------------------------------------------------------------------


@dataclass
class PagedBatch:
    """A forward batch over a paged cache, laid out as the kernels take it."""

    q: torch.Tensor  # [T, Hq, D]
    k_cache: torch.Tensor  # [num_slots, Hkv, D]; NaN in slots no row owns
    v_cache: torch.Tensor
    query_start_loc: torch.Tensor  # [R + 1]
    seq_lens: torch.Tensor  # [R] (or [R, Hkv] for per-head tables)
    page_table: torch.Tensor  # [R, P] (or [R, Hkv, P]); physical pages shuffled, padding 0
    page_size: int
    used_slots: torch.Tensor  # [S] every slot some row owns
    k_scale: torch.Tensor | None = None  # [num_slots, Hkv] for int8 caches
    v_scale: torch.Tensor | None = None

    @property
    def num_rows(self) -> int:
        return self.query_start_loc.shape[0] - 1

    @property
    def scale(self) -> float:
        return float(self.q.shape[-1]) ** -0.5

    def all_rows(self) -> torch.Tensor:
        return torch.arange(self.num_rows, device=DEVICE)

    def tokens_of(self, rows: list[int]) -> torch.Tensor:
        """Flat token indices of ``rows``."""
        qsl = self.query_start_loc.tolist()
        return torch.tensor([t for r in rows for t in range(qsl[r], qsl[r + 1])], device=DEVICE)


def make_batch(
    seq_lens: list[int],
    q_lens: list[int],
    *,
    page_size: int,
    num_kv_heads: int,
    group: int,
    head_dim: int,
    dtype: torch.dtype = F32,
    max_pages: int | None = None,
    seed: int = 0,
) -> PagedBatch:
    """Rows of ``seq_lens`` keys whose last ``q_lens`` tokens are queries; pages shuffled.

    Physical page 0 is never handed out (it is where padding entries point), and two spare
    pages stay unused; both, like the tails of partly filled pages, are NaN.
    """
    gen = torch.Generator().manual_seed(seed)
    pages_per_row = [-(-n // page_size) for n in seq_lens]
    width = max_pages if max_pages is not None else max(pages_per_row)
    num_pages = 1 + sum(pages_per_row) + 2
    free = (1 + torch.randperm(num_pages - 1, generator=gen)).tolist()

    page_table = torch.zeros(len(seq_lens), width, dtype=torch.int64)
    used = []
    for r, (n, n_pages) in enumerate(zip(seq_lens, pages_per_row)):
        pages, free = free[:n_pages], free[n_pages:]
        page_table[r, :n_pages] = torch.tensor(pages)
        j = torch.arange(n)
        used.append(page_table[r, j // page_size] * page_size + j % page_size)
    used_slots = torch.cat(used)

    shape = (num_pages * page_size, num_kv_heads, head_dim)
    k_cache = torch.full(shape, float("nan"))
    v_cache = torch.full(shape, float("nan"))
    k_cache[used_slots] = torch.randn(len(used_slots), num_kv_heads, head_dim, generator=gen)
    v_cache[used_slots] = torch.randn(len(used_slots), num_kv_heads, head_dim, generator=gen)
    q = torch.randn(sum(q_lens), num_kv_heads * group, head_dim, generator=gen)
    query_start_loc = torch.tensor([0] + q_lens).cumsum(0)
    return PagedBatch(
        q=q.to(DEVICE, dtype),
        k_cache=k_cache.to(DEVICE, dtype),
        v_cache=v_cache.to(DEVICE, dtype),
        query_start_loc=query_start_loc.to(DEVICE),
        seq_lens=torch.tensor(seq_lens, device=DEVICE),
        page_table=page_table.to(DEVICE),
        page_size=page_size,
        used_slots=used_slots.to(DEVICE),
    )


def quantize_caches(batch: PagedBatch) -> PagedBatch:
    """The same batch with int8 caches, filled through ``store_kv`` (unused scales are NaN)."""
    num_slots, num_kv_heads, _ = batch.k_cache.shape
    k_cache = torch.zeros_like(batch.k_cache, dtype=torch.int8)
    v_cache = torch.zeros_like(batch.v_cache, dtype=torch.int8)
    k_scale = torch.full((num_slots, num_kv_heads), float("nan"), device=DEVICE)
    v_scale = k_scale.clone()
    slots = batch.used_slots
    store_kv(batch.k_cache[slots], batch.v_cache[slots], k_cache, v_cache, slots, k_scale, v_scale)
    return replace(batch, k_cache=k_cache, v_cache=v_cache, k_scale=k_scale, v_scale=v_scale)


def dequantized(cache: torch.Tensor, scales: torch.Tensor | None) -> torch.Tensor:
    if scales is None:
        return cache.double()
    return cache.double() * scales.double()[..., None]


def reference_attention(batch: PagedBatch, rows: list[int]) -> torch.Tensor:
    """``[T, Hq, D]`` float64 causal paged attention; only the tokens of ``rows`` are filled.

    Handles the shared ``[R, P]`` table and the per-KV-head ``[R, Hkv, P]`` one alike: each
    (row, kv head) gathers its own keys ``0 .. seq_len - 1`` through its own page list.
    """
    k_cache = dequantized(batch.k_cache, batch.k_scale)
    v_cache = dequantized(batch.v_cache, batch.v_scale)
    num_kv_heads = k_cache.shape[1]
    group = batch.q.shape[1] // num_kv_heads
    out = torch.full(batch.q.shape, float("nan"), dtype=torch.float64, device=DEVICE)
    qsl = batch.query_start_loc.tolist()
    for r in rows:
        tokens = slice(qsl[r], qsl[r + 1])
        q_len = qsl[r + 1] - qsl[r]
        for h in range(num_kv_heads):
            per_head = batch.page_table.dim() == 3
            pages = batch.page_table[r, h] if per_head else batch.page_table[r]
            kv_len = int(batch.seq_lens[r, h] if batch.seq_lens.dim() == 2 else batch.seq_lens[r])
            j = torch.arange(kv_len, device=DEVICE)
            slots = pages[j // batch.page_size] * batch.page_size + j % batch.page_size
            keys, values = k_cache[slots, h], v_cache[slots, h]  # [L, D]
            heads = slice(h * group, (h + 1) * group)
            q = batch.q[tokens, heads].double()  # [Q, group, D]
            scores = torch.einsum("qgd,ld->gql", q, keys) * batch.scale
            positions = kv_len - q_len + torch.arange(q_len, device=DEVICE)
            scores = scores.masked_fill(j[None, :] > positions[:, None], float("-inf"))
            out[tokens, heads] = torch.einsum("gql,ld->qgd", scores.softmax(-1), values)
    return out


def run_decode(batch: PagedBatch, rows: torch.Tensor, out: torch.Tensor, **kwargs: int) -> None:
    paged_decode_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        rows,
        batch.query_start_loc,
        batch.seq_lens,
        batch.page_table,
        batch.page_size,
        batch.scale,
        k_scale=batch.k_scale,
        v_scale=batch.v_scale,
        **kwargs,
    )


def run_extend(batch: PagedBatch, rows: torch.Tensor, out: torch.Tensor) -> None:
    q_lens = batch.query_start_loc.diff()[rows]
    paged_extend_attention(
        batch.q,
        batch.k_cache,
        batch.v_cache,
        out,
        rows,
        batch.query_start_loc,
        batch.seq_lens,
        batch.page_table,
        batch.page_size,
        batch.scale,
        max_query_len=int(q_lens.max()),
        k_scale=batch.k_scale,
        v_scale=batch.v_scale,
    )


# --------------------------------------------------------------------------------------------
# store_kv
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, BF16])
def test_store_kv_writes_each_token_at_its_slot(dtype: torch.dtype) -> None:
    num_tokens, num_kv_heads, head_dim = 7, 2, 80
    # k and v as non-contiguous views of one projection output, as a model produces them.
    kv = torch.randn(num_tokens, 2 * num_kv_heads, head_dim, device=DEVICE, dtype=dtype)
    k, v = kv[:, :num_kv_heads], kv[:, num_kv_heads:]
    k_cache = torch.full((40, num_kv_heads, head_dim), -1.0, device=DEVICE, dtype=dtype)
    v_cache = k_cache.clone()
    slots = torch.tensor([33, 2, 17, 5, 0, 39, 21], device=DEVICE)

    store_kv(k, v, k_cache, v_cache, slots)

    torch.testing.assert_close(k_cache[slots], k, atol=0, rtol=0)
    torch.testing.assert_close(v_cache[slots], v, atol=0, rtol=0)
    untouched = torch.ones(40, dtype=torch.bool, device=DEVICE)
    untouched[slots] = False
    assert (k_cache[untouched] == -1).all() and (v_cache[untouched] == -1).all()


def test_store_kv_int8_round_trip_is_within_half_a_step() -> None:
    num_tokens, num_kv_heads, head_dim = 6, 3, 64
    k = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEVICE)
    k[2, 1] = 0.0  # an all-zero row: floored scale, no division by zero
    k[4, 0, 5] = 50.0  # an outlier only coarsens its own (token, head) row
    v = torch.randn(num_tokens, num_kv_heads, head_dim, device=DEVICE) * 3
    k_cache = torch.zeros(16, num_kv_heads, head_dim, dtype=torch.int8, device=DEVICE)
    v_cache = k_cache.clone()
    k_scale = torch.full((16, num_kv_heads), -1.0, device=DEVICE)
    v_scale = k_scale.clone()
    slots = torch.tensor([9, 0, 15, 3, 7, 12], device=DEVICE)

    store_kv(k, v, k_cache, v_cache, slots, k_scale=k_scale, v_scale=v_scale)

    for x, cache, scales in ((k, k_cache, k_scale), (v, v_cache, v_scale)):
        stored, scale = cache[slots], scales[slots]
        expected_scale = (x.abs().amax(-1) / 127).clamp_min(MIN_SCALE)
        torch.testing.assert_close(scale, expected_scale, rtol=1e-6, atol=0)
        assert stored.abs().max() <= 127
        error = (stored.float() * scale[..., None] - x).abs()
        assert (error <= scale[..., None] * 0.5 * (1 + 1e-5)).all()
    assert (k_cache[slots[2], 1] == 0).all() and k_scale[slots[2], 1] == MIN_SCALE
    assert (k_scale[[1, 2, 4, 5, 6, 8, 10, 11, 13, 14]] == -1).all()  # slots not written


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------


DECODE_CASES = [
    # page_size, head_dim, group (GQA ratio), dtype
    pytest.param(1, 64, 1, F32, id="page1-d64-mha-f32"),
    pytest.param(16, 128, 2, BF16, id="page16-d128-gqa2-bf16"),
    pytest.param(5, 80, 8, F32, id="page5-d80-gqa8-f32"),
    pytest.param(12, 96, 4, F16, id="page12-d96-gqa4-f16"),
]


@pytest.mark.parametrize("page_size, head_dim, group, dtype", DECODE_CASES)
def test_decode_matches_reference(
    page_size: int, head_dim: int, group: int, dtype: torch.dtype
) -> None:
    # Lengths: a single key, one exact page of 16, and rows ending mid-page for every page size.
    batch = make_batch(
        [1, 16, 23, 37],
        [1, 1, 1, 1],
        page_size=page_size,
        num_kv_heads=2 if group < 8 else 1,
        group=group,
        head_dim=head_dim,
        dtype=dtype,
    )
    out = torch.zeros_like(batch.q)
    run_decode(batch, batch.all_rows(), out)
    assert_close(out, reference_attention(batch, list(range(batch.num_rows))))


def test_decode_split_kv_matches_one_split() -> None:
    batch = make_batch([3, 50, 130], [1, 1, 1], page_size=16, num_kv_heads=2, group=2, head_dim=64)
    expected = reference_attention(batch, [0, 1, 2])
    outputs = {}
    # 4 and 7 splits leave the 3-key row with empty splits (and 7 is not a power of two).
    for num_splits in (1, 4, 7):
        out = torch.zeros_like(batch.q)
        run_decode(batch, batch.all_rows(), out, num_splits=num_splits)
        assert_close(out, expected)
        outputs[num_splits] = out
    torch.testing.assert_close(outputs[4], outputs[1], atol=1e-5, rtol=0)
    torch.testing.assert_close(outputs[7], outputs[1], atol=1e-5, rtol=0)


def test_decode_with_a_page_table_per_kv_head() -> None:
    """Each KV head reads its own subset of the row's pages (sparse attention's layout)."""
    page_size = 4
    batch = make_batch(
        [14, 9], [1, 1], page_size=page_size, num_kv_heads=2, group=2, head_dim=64, seed=1
    )
    # Row 0 has pages 0..3 (the last one holds 2 keys), row 1 pages 0..2 (the last holds 1).
    kept = [[[0, 2, 3], [1]], [[2], [0, 1, 2]]]  # [row][kv head] logical pages kept, in order
    table = torch.zeros(2, 2, 3, dtype=torch.int64, device=DEVICE)
    lens = torch.zeros(2, 2, dtype=torch.int64, device=DEVICE)
    for r, per_head in enumerate(kept):
        row_len = int(batch.seq_lens[r])
        for h, logical in enumerate(per_head):
            table[r, h, : len(logical)] = batch.page_table[r, logical]
            keys_in = [min(page_size, row_len - p * page_size) for p in logical]
            assert all(n == page_size for n in keys_in[:-1])  # only the last page may be partial
            lens[r, h] = sum(keys_in)
    per_head_batch = replace(batch, page_table=table, seq_lens=lens)

    expected = reference_attention(per_head_batch, [0, 1])
    for num_splits in (1, 2):
        out = torch.zeros_like(batch.q)
        run_decode(per_head_batch, batch.all_rows(), out, num_splits=num_splits)
        assert_close(out, expected)


# --------------------------------------------------------------------------------------------
# Extend
# --------------------------------------------------------------------------------------------


EXTEND_CASES = [
    # seq_lens, q_lens, page_size, head_dim, group, dtype
    pytest.param([5, 40], [5, 40], 16, 64, 2, F32, id="empty-prefix-two-query-blocks"),
    pytest.param([23, 9], [7, 1], 5, 80, 8, BF16, id="prefix-mid-page-gqa8-bf16"),
    pytest.param([12, 33], [4, 33], 1, 128, 1, F32, id="page1-d128-mha"),
]


@pytest.mark.parametrize("seq_lens, q_lens, page_size, head_dim, group, dtype", EXTEND_CASES)
def test_extend_matches_reference(
    seq_lens: list[int],
    q_lens: list[int],
    page_size: int,
    head_dim: int,
    group: int,
    dtype: torch.dtype,
) -> None:
    batch = make_batch(
        seq_lens,
        q_lens,
        page_size=page_size,
        num_kv_heads=2 if group < 8 else 1,
        group=group,
        head_dim=head_dim,
        dtype=dtype,
    )
    out = torch.zeros_like(batch.q)
    run_extend(batch, batch.all_rows(), out)
    assert_close(out, reference_attention(batch, list(range(batch.num_rows))))


def test_extend_when_the_row_fills_its_whole_page_table() -> None:
    # Row 0: 36 keys = 3 pages of 12, every entry of the table used, none padding; its prefix
    # (31 keys) ends mid-page. Row 1: a prefix-cache hit, the whole prompt but its last token
    # cached, that one token run through the extend path.
    batch = make_batch(
        [36, 24],
        [5, 1],
        page_size=12,
        num_kv_heads=2,
        group=4,
        head_dim=96,
        dtype=F16,
        max_pages=3,
    )
    out = torch.zeros_like(batch.q)
    run_extend(batch, batch.all_rows(), out)
    assert_close(out, reference_attention(batch, [0, 1]))


# --------------------------------------------------------------------------------------------
# int8 caches, mixed batches, argument checks, the split heuristic
# --------------------------------------------------------------------------------------------


def test_int8_caches_match_the_reference_on_dequantized_values() -> None:
    batch = quantize_caches(
        make_batch([29, 18, 7], [1, 6, 7], page_size=8, num_kv_heads=2, group=2, head_dim=64)
    )
    expected = reference_attention(batch, [0, 1, 2])
    out = torch.zeros_like(batch.q)
    decode_rows = torch.tensor([0], device=DEVICE)
    run_decode(batch, decode_rows, out, num_splits=2)
    run_extend(batch, torch.tensor([1, 2], device=DEVICE), out)
    assert_close(out, expected)


def test_mixed_batch_decode_and_extend_rows_write_disjoint_tokens() -> None:
    batch = make_batch(
        [20, 6, 9, 30], [1, 6, 1, 3], page_size=4, num_kv_heads=2, group=2, head_dim=64, seed=2
    )
    expected = reference_attention(batch, [0, 1, 2, 3])
    decode_tokens = batch.tokens_of([0, 2])
    extend_tokens = batch.tokens_of([1, 3])
    out = torch.full_like(batch.q, float("nan"))

    run_decode(batch, torch.tensor([0, 2], device=DEVICE), out)
    assert out[extend_tokens].isnan().all()
    after_decode = out[decode_tokens].clone()

    run_extend(batch, torch.tensor([1, 3], device=DEVICE), out)
    assert torch.equal(out[decode_tokens], after_decode)
    assert_close(out, expected)


def test_unsupported_arguments_raise_value_error_naming_them() -> None:
    batch = make_batch([4], [1], page_size=4, num_kv_heads=1, group=2, head_dim=64)
    out = torch.zeros_like(batch.q)
    rows = batch.all_rows()
    wide = torch.zeros(1, 2, 512, device=DEVICE)
    with pytest.raises(ValueError, match="head_dim"):
        run_decode(replace(batch, q=wide), rows, torch.zeros_like(wide))
    with pytest.raises(ValueError, match="k_cache"):
        run_decode(replace(batch, k_cache=batch.k_cache.half()), rows, out)
    with pytest.raises(ValueError, match="k_cache"):  # int8 without scales
        run_decode(replace(batch, k_cache=batch.k_cache.to(torch.int8)), rows, out)
    with pytest.raises(ValueError, match="v_scale"):
        q8 = quantize_caches(batch)
        run_decode(replace(q8, v_scale=None), rows, out)
    with pytest.raises(ValueError, match="page_table"):  # per-head tables are decode-only
        run_extend(replace(batch, page_table=batch.page_table[:, None]), rows, out)
    with pytest.raises(ValueError, match="num_splits"):
        run_decode(batch, rows, out, num_splits=0)
    with pytest.raises(ValueError, match="slot_mapping"):
        kv = torch.zeros(3, 1, 64, device=DEVICE)
        store_kv(kv, kv, batch.k_cache, batch.v_cache, torch.zeros(5, device=DEVICE))


def test_default_num_splits_fills_the_machine_only_for_long_contexts() -> None:
    assert default_num_splits(num_programs=256, max_kv_len=32768, num_sms=132) == 1  # full
    assert default_num_splits(num_programs=8, max_kv_len=200, num_sms=132) == 1  # short
    assert default_num_splits(num_programs=8, max_kv_len=1024, num_sms=132) == 4  # 256 keys each
    assert default_num_splits(num_programs=8, max_kv_len=32768, num_sms=132) == 17  # one wave
    assert default_num_splits(num_programs=1, max_kv_len=1 << 20, num_sms=132) == MAX_SPLITS
    assert default_num_splits(num_programs=8, max_kv_len=32768, num_sms=1) == 1  # interpreter


def test_split_scratch_is_reused_across_calls_and_grows_on_demand() -> None:
    scratch = SplitScratch()
    m, l, acc = scratch.partials(4, 8, 3, 64, DEVICE)
    assert m.shape == l.shape == (4, 8, 3) and acc.shape == (4, 8, 3, 64)
    buffer = scratch.buffer
    assert buffer is not None
    smaller = scratch.partials(2, 8, 2, 64, DEVICE)
    assert scratch.buffer is buffer and smaller[0].data_ptr() == buffer.data_ptr()
    scratch.partials(16, 8, 4, 64, DEVICE)
    assert scratch.buffer is not buffer and scratch.buffer.numel() >= 16 * 8 * 4 * 66


def test_the_backend_checks_the_step_once_and_plans_its_decode_once() -> None:
    batch = ForwardBatch.build(
        [BatchRow([5], 6, [1, 2], sample=True), BatchRow([1, 2, 3], 0, [3], sample=True)],
        page_size=4,
        device=DEVICE,
    )
    backend = TritonPagedAttention()
    with pytest.raises(ValueError, match="page_table"):
        backend.prepare(replace(batch, page_table=batch.page_table.float()))
    backend.prepare(batch)
    q = torch.randn(batch.num_tokens, 4, 64, device=DEVICE)
    plans = []
    for _ in range(2):  # two layers of one step
        kv = (torch.randn(24, 2, 64, device=DEVICE), torch.randn(24, 2, 64, device=DEVICE))
        backend.forward(q, torch.randn(4, 2, 64), torch.randn(4, 2, 64), kv, batch, 0.125)
        plans.append(backend.decode_plan)
    assert plans[0] is not None and plans[1] is plans[0]
    backend.prepare(batch)
    assert backend.decode_plan is None  # a new step plans afresh
