"""Sparse attention methods (``kernels/sparse/``) against brute force written out plainly.

Every expectation here is recomputed from the pool's raw contents with Python loops over rows,
KV heads, pages and positions: which positions a method must read (StreamingLLM's sinks and
window, Quest's top pages by key-bound score, the oracle's top-k keys), Quest's per-page key
bounds after a history of stores (chunks ending mid-page, pages freed and reused with stale
tails, pages shared by a prefix), and attention over a selection in float64.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels import PagedAttentionBackend, get_attention_backend
from vibe_sgl_lite.kernels.sparse import (
    AttentionMethod,
    DecodeView,
    KVSelection,
    QuestAttention,
    ScoreCapture,
    StreamingAttention,
    TopKOracleAttention,
    attend_selection,
    make_attention_method,
)
from vibe_sgl_lite.kernels.sparse.backend import SparseAttention
from vibe_sgl_lite.memory.kv_pool import KVPool, LayerKV, quantize_int8

pytestmark = pytest.mark.kernels

SMALL = settings(max_examples=25, deadline=None)
PAGE_SIZES = [1, 4, 5]


# ---------------------------------------------------------------------------------------------
# building blocks: a pool, shuffled page tables, a decode view; plain readers of the pool
# ---------------------------------------------------------------------------------------------


def store(kv: LayerKV, slots: list[int], k: torch.Tensor, v: torch.Tensor) -> None:
    """Write ``k, v [len(slots), Hkv, D]`` at ``slots`` (quantised when the pool is int8)."""
    index = torch.tensor(slots, dtype=torch.int64)
    if kv.k_scale is not None:
        assert kv.v_scale is not None
        for x, cache, scales in ((k, kv.k, kv.k_scale), (v, kv.v, kv.v_scale)):
            q, scale = quantize_int8(x)
            cache.index_copy_(0, index, q)
            scales.index_copy_(0, index, scale)
    else:
        kv.k.index_copy_(0, index, k.to(kv.k.dtype))
        kv.v.index_copy_(0, index, v.to(kv.v.dtype))


def read_k(kv: LayerKV, slot: int) -> torch.Tensor:
    """The key at ``slot`` as attention sees it, ``[Hkv, D]`` float64 (dequantised if int8)."""
    if kv.k_scale is None:
        return kv.k[slot].double()
    return (kv.k[slot].float() * kv.k_scale[slot].unsqueeze(-1)).double()


def read_v(kv: LayerKV, slot: int) -> torch.Tensor:
    if kv.v_scale is None:
        return kv.v[slot].double()
    return (kv.v[slot].float() * kv.v_scale[slot].unsqueeze(-1)).double()


def slot_of(table: list[int], pos: int, page_size: int) -> int:
    return table[pos // page_size] * page_size + pos % page_size


@dataclass
class ViewCase:
    view: DecodeView
    tables: list[list[int]]  # each row's pages (unpadded)
    seq_lens: list[int]
    page_size: int

    @property
    def kv(self) -> LayerKV:
        return self.view.kv

    def slots(self, row: int) -> list[int]:
        return [slot_of(self.tables[row], p, self.page_size) for p in range(self.seq_lens[row])]


def make_view(
    seq_lens: list[int],
    *,
    page_size: int,
    heads: int = 4,
    kv_heads: int = 2,
    dim: int = 8,
    seed: int = 0,
    int8: bool = False,
    observe: QuestAttention | None = None,
) -> ViewCase:
    """Decode rows with ``seq_lens`` keys on shuffled pages of a real ``KVPool``.

    Every slot of the pool holds random K/V, including the tail slots past a row's last key
    (stale garbage a correct method never reads). ``observe``: a Quest method that is shown the
    rows' keys (and only those) through ``observe_store``, as the backend would have.
    """
    gen = torch.Generator().manual_seed(seed)
    pages_needed = [-(-n // page_size) for n in seq_lens]
    free = list(range(1, sum(pages_needed) + 3))
    random.Random(seed).shuffle(free)
    tables = []
    for n in pages_needed:
        tables.append(free[:n])
        free = free[n:]
    num_pages = sum(pages_needed) + 3
    pool = KVPool(1, num_pages, page_size, kv_heads, dim, torch.int8 if int8 else torch.float32)
    kv = pool.layer(0)
    all_slots = list(range(pool.num_slots))
    store(
        kv,
        all_slots,
        torch.randn(len(all_slots), kv_heads, dim, generator=gen),
        torch.randn(len(all_slots), kv_heads, dim, generator=gen),
    )
    width = max(len(t) for t in tables)
    page_table = torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int64)
    view = DecodeView(
        layer=0,
        request_ids=[100 + r for r in range(len(seq_lens))],
        q=torch.randn(len(seq_lens), heads, dim, generator=gen),
        kv=kv,
        page_table=page_table,
        seq_lens=torch.tensor(seq_lens, dtype=torch.int64),
        seq_lens_cpu=list(seq_lens),
        page_size=page_size,
        scale=dim**-0.5,
    )
    case = ViewCase(view, tables, list(seq_lens), page_size)
    if observe is not None:
        written = [s for r in range(len(seq_lens)) for s in case.slots(r)]
        observe.observe_store(kv, torch.tensor(written, dtype=torch.int64), page_size)
    return case


def read_selection(selection: KVSelection, rows: int, kv_heads: int) -> list[list[list[int]]]:
    """The valid slots of each (row, KV head), in the selection's order."""
    assert selection.slots.shape[:2] == (rows, kv_heads)
    assert selection.lengths.shape == (rows, kv_heads)
    out = []
    for r in range(rows):
        per_head = []
        for h in range(kv_heads):
            n = int(selection.lengths[r, h])
            assert 1 <= n <= selection.slots.shape[2]
            per_head.append([int(s) for s in selection.slots[r, h, :n]])
        out.append(per_head)
    return out


def assert_selection_reads(case: ViewCase, selection: KVSelection, expected: list[list[list[int]]]):
    """``expected[r][h]``: positions; the selection must hold exactly their slots, ascending."""
    got = read_selection(selection, len(case.seq_lens), case.view.num_kv_heads)
    for r, table in enumerate(case.tables):
        for h in range(case.view.num_kv_heads):
            positions = sorted(expected[r][h])
            assert len(set(positions)) == len(positions)
            assert all(0 <= p < case.seq_lens[r] for p in positions)
            want = [slot_of(table, p, case.page_size) for p in positions]
            assert got[r][h] == want, (r, h, positions)
            n = len(positions)
            assert selection.positions[r, h, :n].tolist() == positions, (r, h)


# ---------------------------------------------------------------------------------------------
# brute-force selection rules, one (row, KV head) at a time
# ---------------------------------------------------------------------------------------------


def brute_streaming(seq_len: int, sinks: int, window: int) -> list[int]:
    if seq_len <= sinks + window:
        return list(range(seq_len))
    return sorted(set(range(sinks)) | set(range(seq_len - window, seq_len)))


def quest_pages_kept(num_pages: int, budget: int | None, ratio: float | None) -> int:
    if budget is not None:
        return min(num_pages, budget)
    assert ratio is not None
    return min(num_pages, max(2, math.ceil(ratio * num_pages)))


def brute_quest(
    q_group: torch.Tensor, keys: list[torch.Tensor], page_size: int, kept: int
) -> list[int]:
    """``q_group [G, D]``, ``keys``: the row's keys ``[D]`` of one KV head, in position order."""
    seq_len = len(keys)
    num_pages = -(-seq_len // page_size)
    scores = []
    for page in range(num_pages):
        page_keys = keys[page * page_size : min((page + 1) * page_size, seq_len)]
        dim = len(page_keys[0])
        kmin = [min(float(k[d]) for k in page_keys) for d in range(dim)]
        kmax = [max(float(k[d]) for k in page_keys) for d in range(dim)]
        score = 0.0
        for q in q_group:
            for d in range(dim):
                score += max(float(q[d]) * kmax[d], float(q[d]) * kmin[d])
        scores.append(score)
    pages = {0, num_pages - 1}
    others = sorted(range(1, num_pages - 1), key=lambda p: -scores[p])
    pages |= set(others[: max(0, kept - len(pages))])
    assert len(pages) == kept
    return [
        p
        for page in sorted(pages)
        for p in range(page * page_size, (page + 1) * page_size)
        if p < seq_len
    ]


def brute_topk(q_group: torch.Tensor, keys: list[torch.Tensor], k: int) -> list[int]:
    scores = []
    for key in keys:
        scores.append(
            max(sum(float(q[d]) * float(key[d]) for d in range(len(key))) for q in q_group)
        )
    return sorted(sorted(range(len(keys)), key=lambda p: -scores[p])[:k])


def row_keys(case: ViewCase, row: int, kv_head: int) -> list[torch.Tensor]:
    return [read_k(case.kv, s)[kv_head] for s in case.slots(row)]


def q_group(case: ViewCase, row: int, kv_head: int) -> torch.Tensor:
    group = case.view.q.shape[1] // case.view.num_kv_heads
    return case.view.q[row, kv_head * group : (kv_head + 1) * group].double()


def brute_positions(method: AttentionMethod, case: ViewCase) -> list[list[list[int]]]:
    """What ``method`` must read, per row and KV head (dense: everything)."""
    out = []
    for r, seq_len in enumerate(case.seq_lens):
        per_head = []
        for h in range(case.view.num_kv_heads):
            if isinstance(method, StreamingAttention):
                per_head.append(brute_streaming(seq_len, method.num_sink_tokens, method.window))
            elif isinstance(method, QuestAttention):
                n_pages = -(-seq_len // case.page_size)
                kept = quest_pages_kept(n_pages, method.budget, method.ratio)
                per_head.append(
                    brute_quest(q_group(case, r, h), row_keys(case, r, h), case.page_size, kept)
                )
            elif isinstance(method, TopKOracleAttention):
                if method.budget is not None:
                    k = min(method.budget, seq_len)
                else:
                    assert method.ratio is not None
                    k = min(seq_len, max(1, math.ceil(method.ratio * seq_len)))
                per_head.append(brute_topk(q_group(case, r, h), row_keys(case, r, h), k))
            else:
                assert type(method) is AttentionMethod
                per_head.append(list(range(seq_len)))
        out.append(per_head)
    return out


def brute_attend(case: ViewCase, positions: list[list[list[int]]]) -> torch.Tensor:
    """softmax(scale q k^T) v over ``positions[r][kv_head]``, float64, head by head: [Bd, Hq, D]."""
    bd, heads, dim = case.view.q.shape
    group = heads // case.view.num_kv_heads
    out = torch.zeros(bd, heads, dim, dtype=torch.float64)
    for r in range(bd):
        for h in range(heads):
            kvh = h // group
            q = case.view.q[r, h].double()
            slots = [slot_of(case.tables[r], p, case.page_size) for p in positions[r][kvh]]
            scores = [case.view.scale * float(q @ read_k(case.kv, s)[kvh]) for s in slots]
            top = max(scores)
            weights = [math.exp(x - top) for x in scores]
            total = sum(weights)
            for w, s in zip(weights, slots):
                out[r, h] += (w / total) * read_v(case.kv, s)[kvh]
    return out


def all_positions(case: ViewCase) -> list[list[list[int]]]:
    return [[list(range(n))] * case.view.num_kv_heads for n in case.seq_lens]


# ---------------------------------------------------------------------------------------------
# 1. StreamingAttention
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("sinks, window", [(4, 6), (0, 3), (2, 1)])
def test_streaming_reads_sinks_and_window(page_size: int, sinks: int, window: int) -> None:
    """Rows shorter than, equal to, one past and far past sinks + window, in one view."""
    keep = sinks + window
    lens = [1, max(1, keep - 1), keep, keep + 1, keep + 17, 3]
    case = make_view(lens, page_size=page_size, seed=page_size + 7 * sinks)
    method = StreamingAttention(sinks, window)
    selection = method.select(case.view)
    expected = [[brute_streaming(n, sinks, window)] * 2 for n in lens]
    assert_selection_reads(case, selection, expected)
    for r, n in enumerate(lens):
        assert selection.lengths[r].tolist() == [min(n, keep)] * 2


@SMALL
@given(
    lens=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    sinks=st.integers(0, 6),
    window=st.integers(1, 12),
    page_size=st.sampled_from(PAGE_SIZES),
    kv_heads=st.sampled_from([1, 2]),
    seed=st.integers(0, 2**16),
)
def test_streaming_property(
    lens: list[int], sinks: int, window: int, page_size: int, kv_heads: int, seed: int
) -> None:
    case = make_view(lens, page_size=page_size, kv_heads=kv_heads, heads=2 * kv_heads, seed=seed)
    selection = StreamingAttention(sinks, window).select(case.view)
    assert_selection_reads(
        case, selection, [[brute_streaming(n, sinks, window)] * kv_heads for n in lens]
    )


# ---------------------------------------------------------------------------------------------
# 2. QuestAttention: metadata upkeep
# ---------------------------------------------------------------------------------------------


def assert_quest_bounds(method: QuestAttention, kv: LayerKV, valid: dict[int, int], ps: int):
    """``valid``: page -> how many of its first slots hold the current owner's keys."""
    assert valid, "nothing to check"
    kmin, kmax = method.key_min[kv.index], method.key_max[kv.index]
    for page, count in valid.items():
        assert 1 <= count <= ps
        keys = torch.stack([read_k(kv, page * ps + o) for o in range(count)]).float()
        assert torch.equal(kmin[page], keys.amin(0)), (page, count)
        assert torch.equal(kmax[page], keys.amax(0)), (page, count)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("page_size", [4, 5])
def test_quest_bounds_after_chunks_and_page_reuse(int8: bool, page_size: int) -> None:
    """A fills pages over three steps (chunks ending mid-page), is freed; B reuses A's pages and
    rewrites only their first slots: the stale tails (A's keys, and +-100 garbage) must not
    count."""
    ps, heads, dim = page_size, 2, 3
    pool = KVPool(1, 6, ps, heads, dim, torch.int8 if int8 else torch.float32)
    kv = pool.layer(0)
    gen = torch.Generator().manual_seed(ps)
    garbage = torch.full((pool.num_slots, heads, dim), 100.0)
    garbage[::2] = -100.0
    store(kv, list(range(pool.num_slots)), garbage, garbage)
    method = QuestAttention(budget=2)

    def step(slots: list[int]) -> None:
        k = torch.randn(len(slots), heads, dim, generator=gen)
        store(kv, slots, k, k)
        method.observe_store(kv, torch.tensor(slots, dtype=torch.int64), ps)

    a_pages = [3, 1, 4]
    a_slots = [slot_of(a_pages, p, ps) for p in range(3 * ps)]
    chunks = [(0, ps - 1), (ps - 1, ps + 2), (ps + 2, 3 * ps - 1)]  # every chunk ends mid-page
    for lo, hi in chunks:
        step(a_slots[lo:hi])
        filled = hi
        valid = {pg: min(ps, filled - i * ps) for i, pg in enumerate(a_pages) if filled > i * ps}
        assert_quest_bounds(method, kv, valid, ps)
    # A is freed; B takes page 4 (A's last, partly filled) then page 1 (A's full middle page).
    b_pages = [4, 1]
    b_slots = [slot_of(b_pages, p, ps) for p in range(2 * ps)]
    step(b_slots[:2])  # only the first 2 offsets of page 4 are B's; the tail is A's / garbage
    assert_quest_bounds(method, kv, {4: 2}, ps)
    step(b_slots[2 : ps + 1])  # page 4 full, page 1: only offset 0 rewritten
    assert_quest_bounds(method, kv, {4: ps, 1: 1}, ps)
    # the stale tail mattered: bounds over the whole page would differ from B's one key
    whole = torch.stack([read_k(kv, ps + o) for o in range(ps)]).float()
    assert not torch.equal(whole.amax(0), method.key_max[0][1])


@dataclass
class Seq:
    pages: list[int] = field(default_factory=list)
    length: int = 0


@SMALL
@given(data=st.data(), page_size=st.sampled_from([1, 3, 4]), int8=st.booleans())
def test_quest_bounds_property(data: st.DataObject, page_size: int, int8: bool) -> None:
    """Random histories of steps: sequences start (sometimes sharing a live one's full prefix
    pages, as the prefix cache does), grow by chunks of any size, and are freed; freed pages are
    reused in random order with stale tails. After every step each page that holds valid tokens
    has the min / max of exactly those tokens."""
    ps, heads, dim, num_pages = page_size, 2, 3, 10
    pool = KVPool(1, num_pages, ps, heads, dim, torch.int8 if int8 else torch.float32)
    kv = pool.layer(0)
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**16), label="seed"))
    junk = 40 + 10 * torch.rand(pool.num_slots, heads, dim, generator=gen)
    sign = torch.where(torch.rand(junk.shape, generator=gen) > 0.5, 1.0, -1.0)
    store(kv, list(range(pool.num_slots)), junk * sign, junk)
    method = QuestAttention(budget=2)
    free = list(range(num_pages))
    refs = [0] * num_pages
    seqs: list[Seq] = []
    for _ in range(data.draw(st.integers(1, 10), label="steps")):
        # free a sequence
        free_one: bool = data.draw(st.booleans(), label="free")
        if seqs and free_one:
            gone = seqs.pop(data.draw(st.integers(0, len(seqs) - 1), label="which"))
            for p in gone.pages:
                refs[p] -= 1
                if refs[p] == 0:
                    free.append(p)
        # start a sequence, maybe on a live one's full pages
        start_one: bool = data.draw(st.booleans(), label="start")
        if len(seqs) < 3 and start_one:
            new = Seq()
            share: bool = data.draw(st.booleans(), label="share")
            if seqs and share:
                donor = seqs[data.draw(st.integers(0, len(seqs) - 1), label="donor")]
                full = data.draw(st.integers(0, donor.length // ps), label="shared pages")
                new.pages, new.length = donor.pages[:full], full * ps
                for p in new.pages:
                    refs[p] += 1
            seqs.append(new)
        slots: list[int] = []
        for seq in seqs:
            n = data.draw(st.integers(0, 2 * ps + 1), label="chunk")
            need = -(-(seq.length + n) // ps) - len(seq.pages)
            if need > len(free):
                continue
            for _ in range(need):
                page = free.pop(data.draw(st.integers(0, len(free) - 1), label="page"))
                refs[page] += 1
                seq.pages.append(page)
            slots += [slot_of(seq.pages, p, ps) for p in range(seq.length, seq.length + n)]
            seq.length += n
        if not slots:
            continue
        k = torch.randn(len(slots), heads, dim, generator=gen)
        store(kv, slots, k, k)  # one store and one observe per step, like the backend
        method.observe_store(kv, torch.tensor(slots, dtype=torch.int64), ps)
        valid: dict[int, int] = {}
        for seq in seqs:
            for i, page in enumerate(seq.pages):
                count = min(ps, seq.length - i * ps)
                if count > 0:
                    valid[page] = max(valid.get(page, 0), count)
        if valid:
            assert_quest_bounds(method, kv, valid, ps)


# ---------------------------------------------------------------------------------------------
# 2. QuestAttention: page choice
# ---------------------------------------------------------------------------------------------


@SMALL
@given(
    lens=st.lists(st.integers(1, 60), min_size=1, max_size=4),
    page_size=st.sampled_from(PAGE_SIZES),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 3]),
    budget=st.integers(2, 5),
    int8=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_quest_page_choice_property(
    lens: list[int],
    page_size: int,
    kv_heads: int,
    group: int,
    budget: int,
    int8: bool,
    seed: int,
) -> None:
    method = QuestAttention(budget=budget)
    case = make_view(
        lens,
        page_size=page_size,
        heads=kv_heads * group,
        kv_heads=kv_heads,
        dim=4,
        seed=seed,
        int8=int8,
        observe=method,
    )
    assert_selection_reads(case, method.select(case.view), brute_positions(method, case))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("page_size, group", [(4, 1), (5, 3), (3, 2)])
def test_quest_page_choice_many_pages(seed: int, page_size: int, group: int) -> None:
    """Rows of 8 to 20 pages, budget 4: two middle pages out of many, by bound."""
    method = QuestAttention(budget=4)
    lens = [8 * page_size, 13 * page_size - 1, 20 * page_size - 2, 3]
    case = make_view(
        lens, page_size=page_size, heads=2 * group, kv_heads=2, seed=seed, observe=method
    )
    expected = brute_positions(method, case)
    for r, n in enumerate(lens):
        for h in range(2):
            pages = sorted({p // page_size for p in expected[r][h]})
            n_pages = -(-n // page_size)
            assert pages[0] == 0 and pages[-1] == n_pages - 1 and len(pages) == min(4, n_pages)
    assert_selection_reads(case, method.select(case.view), expected)


@pytest.mark.parametrize("page_size", [1, 4])
@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.3, 0.5, 0.77, 1.0])
def test_quest_selection_ratio_pages_kept(page_size: int, ratio: float) -> None:
    lens = [1, page_size + 1, 3 * page_size, 7 * page_size - 1, 10 * page_size, 13 * page_size]
    method = QuestAttention(selection_ratio=ratio)
    case = make_view(lens, page_size=page_size, seed=int(ratio * 100), observe=method)
    selection = method.select(case.view)
    got = read_selection(selection, len(lens), 2)
    for r, n in enumerate(lens):
        n_pages = -(-n // page_size)
        want = min(n_pages, max(2, math.ceil(ratio * n_pages)))
        for h in range(2):
            table = case.tables[r]
            pages = {table.index(s // page_size) for s in got[r][h]}
            assert len(pages) == want, (n_pages, ratio)
    assert_selection_reads(case, selection, brute_positions(method, case))


def test_quest_selection_ratio_is_exact_for_decimal_ratios() -> None:
    """100 pages at selection_ratio=0.15: ceil(15) = 15 pages, however the product is taken."""
    assert math.ceil(Fraction("0.15") * 100) == math.ceil(0.15 * 100) == 15
    method = QuestAttention(selection_ratio=0.15)
    case = make_view([100, 20], page_size=1, heads=2, kv_heads=1, seed=0, observe=method)
    selection = method.select(case.view)
    assert selection.lengths.tolist() == [[15], [3]]  # page_size 1: one token per page


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_quest_budget_at_least_the_pages_reads_everything(page_size: int) -> None:
    lens = [1, 2 * page_size, 3 * page_size + 1, 4 * page_size]  # at most 4 pages
    for budget in (4, 5, 50):
        method = QuestAttention(budget=budget)
        case = make_view(lens, page_size=page_size, seed=budget, observe=method)
        selection = method.select(case.view)
        assert_selection_reads(case, selection, all_positions(case))
        assert selection.num_read() == sum(lens) * 2


# ---------------------------------------------------------------------------------------------
# 3. TopKOracleAttention
# ---------------------------------------------------------------------------------------------


@SMALL
@given(
    lens=st.lists(st.integers(1, 30), min_size=1, max_size=4),
    page_size=st.sampled_from(PAGE_SIZES),
    kv_heads=st.sampled_from([1, 2]),
    group=st.sampled_from([1, 2, 4]),
    budget=st.integers(1, 12),
    int8=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_topk_oracle_property(
    lens: list[int],
    page_size: int,
    kv_heads: int,
    group: int,
    budget: int,
    int8: bool,
    seed: int,
) -> None:
    method = TopKOracleAttention(budget=budget)
    case = make_view(
        lens,
        page_size=page_size,
        heads=kv_heads * group,
        kv_heads=kv_heads,
        dim=4,
        seed=seed,
        int8=int8,
    )
    selection = method.select(case.view)
    assert_selection_reads(case, selection, brute_positions(method, case))
    assert selection.lengths.tolist() == [[min(budget, n)] * kv_heads for n in lens]


@pytest.mark.parametrize("ratio", [0.01, 0.25, 0.3, 0.5, 0.77, 1.0])
def test_topk_oracle_selection_ratio(ratio: float) -> None:
    lens = [1, 2, 7, 10, 23, 40]
    method = TopKOracleAttention(selection_ratio=ratio)
    case = make_view(lens, page_size=4, heads=4, kv_heads=2, seed=int(ratio * 100))
    selection = method.select(case.view)
    assert_selection_reads(case, selection, brute_positions(method, case))
    for r, n in enumerate(lens):
        assert selection.lengths[r].tolist() == [min(n, max(1, math.ceil(ratio * n)))] * 2


def test_topk_oracle_selection_ratio_is_exact_for_decimal_ratios() -> None:
    case = make_view([100], page_size=4, heads=2, kv_heads=1, seed=0)
    selection = TopKOracleAttention(selection_ratio=0.15).select(case.view)
    assert selection.lengths.tolist() == [[15]]


# ---------------------------------------------------------------------------------------------
# 4. attend_selection
# ---------------------------------------------------------------------------------------------


def selection_of(case: ViewCase, positions: list[list[list[int]]], pad_slot: int) -> KVSelection:
    """A selection built by hand: the positions' slots, then ``pad_slot`` as filler."""
    rows, heads = len(positions), len(positions[0])
    width = max(len(p) for per_head in positions for p in per_head) + 2
    slots = torch.full((rows, heads, width), pad_slot, dtype=torch.int64)
    lengths = torch.zeros(rows, heads, dtype=torch.int64)
    for r in range(rows):
        for h in range(heads):
            for i, p in enumerate(positions[r][h]):
                slots[r, h, i] = slot_of(case.tables[r], p, case.page_size)
            lengths[r, h] = len(positions[r][h])
    return KVSelection(slots, lengths, torch.zeros_like(slots))


def poison(case: ViewCase) -> int:
    """Put huge K/V in a slot no row owns and return it: reading it would swamp any output."""
    used = {s for r in range(len(case.seq_lens)) for s in case.slots(r)}
    slot = next(s for s in range(case.kv.k.shape[0]) if s not in used)
    big = torch.full((1, case.kv.k.shape[1], case.kv.k.shape[2]), 1e3)
    store(case.kv, [slot], big, big)
    return slot


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("page_size, heads, kv_heads", [(1, 4, 4), (4, 8, 2), (5, 3, 1)])
def test_attend_selection_full_is_dense_attention(
    int8: bool, page_size: int, heads: int, kv_heads: int
) -> None:
    case = make_view(
        [1, 6, 17, 9], page_size=page_size, heads=heads, kv_heads=kv_heads, seed=5, int8=int8
    )
    positions = all_positions(case)
    out = attend_selection(case.view, selection_of(case, positions, poison(case)))
    assert out.shape == case.view.q.shape and out.dtype == case.view.q.dtype
    torch.testing.assert_close(out.double(), brute_attend(case, positions), atol=1e-5, rtol=0)


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("page_size, heads, kv_heads", [(1, 4, 4), (4, 8, 2), (5, 3, 1)])
def test_attend_selection_partial(int8: bool, page_size: int, heads: int, kv_heads: int) -> None:
    lens = [1, 6, 17, 9]
    case = make_view(lens, page_size=page_size, heads=heads, kv_heads=kv_heads, seed=6, int8=int8)
    rng = random.Random(page_size * 31 + heads)
    positions = [
        [sorted(rng.sample(range(n), rng.randint(1, n))) for _ in range(kv_heads)] for n in lens
    ]
    out = attend_selection(case.view, selection_of(case, positions, poison(case)))
    expected = brute_attend(case, positions)
    torch.testing.assert_close(out.double(), expected, atol=1e-5, rtol=0)
    # and the restriction mattered: dense attention differs
    assert not torch.allclose(expected, brute_attend(case, all_positions(case)), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# 5. through PagedAttentionBackend: a prefill step, then a step mixing decode and extend rows
# ---------------------------------------------------------------------------------------------

PS, HQ, HKV, DIM = 4, 4, 2, 8
# (row name, step-1 prompt tokens, step-2 new tokens); rows with 0 in step 1 start in step 2
ROWS = [("A", 13, 1), ("D", 6, 4), ("B", 8, 1), ("E", 0, 5), ("C", 3, 1), ("F", 20, 1)]

METHODS: dict[str, Callable[[], AttentionMethod]] = {
    "dense": AttentionMethod,
    "streaming": lambda: StreamingAttention(2, 5),
    "quest": lambda: QuestAttention(budget=3),
    "quest_ratio": lambda: QuestAttention(selection_ratio=0.4),
    "topk": lambda: TopKOracleAttention(budget=6),
    "topk_ratio": lambda: TopKOracleAttention(selection_ratio=0.3),
}


@dataclass
class TwoSteps:
    batches: list[ForwardBatch]
    qkv: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    tables: dict[str, list[int]]


def two_steps(seed: int) -> TwoSteps:
    gen = torch.Generator().manual_seed(seed)
    pages = list(range(1, 20))
    random.Random(seed).shuffle(pages)
    tables = {}
    for name, first, second in ROWS:
        n = -(-(first + second) // PS)
        tables[name], pages = pages[:n], pages[n:]
    ids = {name: 10 + i for i, (name, _, _) in enumerate(ROWS)}
    step1 = [
        BatchRow(list(range(f)), 0, tables[n], True, request_id=ids[n]) for n, f, _ in ROWS if f
    ]
    step2 = [BatchRow(list(range(s)), f, tables[n], True, request_id=ids[n]) for n, f, s in ROWS]
    batches = [ForwardBatch.build(rows, PS, torch.device("cpu")) for rows in (step1, step2)]
    qkv = []
    for b in batches:
        t = b.num_tokens
        qkv.append(
            (
                torch.randn(t, HQ, DIM, generator=gen),
                torch.randn(t, HKV, DIM, generator=gen),
                torch.randn(t, HKV, DIM, generator=gen),
            )
        )
    return TwoSteps(batches, qkv, tables)


def brute_extend(kv: LayerKV, table: list[int], q: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Causal dense attention of an extend row's queries ``[Q, Hq, D]``, float64, one by one."""
    q_len, heads, _ = q.shape
    group = heads // kv.k.shape[1]
    out = torch.zeros(q.shape, dtype=torch.float64)
    for i in range(q_len):
        visible = [slot_of(table, p, PS) for p in range(seq_len - q_len + i + 1)]
        for h in range(heads):
            scores = [
                DIM**-0.5 * float(q[i, h].double() @ read_k(kv, s)[h // group]) for s in visible
            ]
            weights = torch.tensor(scores, dtype=torch.float64).softmax(0)
            for w, s in zip(weights, visible):
                out[i, h] += w * read_v(kv, s)[h // group]
    return out


def run_steps(
    backend: PagedAttentionBackend | SparseAttention, pool: KVPool, layer: int, steps: TwoSteps
) -> list[torch.Tensor]:
    outs = []
    for batch, (q, k, v) in zip(steps.batches, steps.qkv):
        backend.prepare(batch)
        outs.append(backend.forward(q, k, v, pool.layer(layer), batch, DIM**-0.5))
    return outs


@pytest.mark.parametrize(
    "backend_name, int8", [("reference", False), ("torch", False), ("reference", True)]
)
@pytest.mark.parametrize("method_name", list(METHODS))
def test_backend_mixed_batch(backend_name: str, int8: bool, method_name: str) -> None:
    steps = two_steps(seed=len(method_name))
    dtype = torch.int8 if int8 else torch.float32
    pools = [KVPool(2, 24, PS, HKV, DIM, dtype) for _ in range(2)]
    plain = get_attention_backend(backend_name)
    inner = get_attention_backend(backend_name)
    assert isinstance(plain, PagedAttentionBackend) and isinstance(inner, PagedAttentionBackend)
    methods = [METHODS[method_name](), METHODS[method_name]()]
    hooked = SparseAttention(inner, methods)
    plain_out = run_steps(plain, pools[0], 1, steps)
    out = run_steps(hooked, pools[1], 1, steps)
    kv = pools[1].layer(1)
    assert torch.equal(kv.k, pools[0].layer(1).k) and torch.equal(kv.v, pools[0].layer(1).v)

    # step 1 is all extend rows: identical to the plain backend, and nothing recorded
    assert torch.equal(out[0], plain_out[0])
    batch = steps.batches[1]
    decode = [i for i, n in enumerate(batch.query_lens_cpu) if n == 1]
    extend = [i for i, n in enumerate(batch.query_lens_cpu) if n > 1]
    assert len(decode) == 4 and len(extend) == 2
    for r in extend:
        lo, hi = int(batch.query_start_loc[r]), int(batch.query_start_loc[r + 1])
        assert torch.equal(out[1][lo:hi], plain_out[1][lo:hi]), ROWS[r][0]
        want = brute_extend(
            kv, steps.tables[ROWS[r][0]], steps.qkv[1][0][lo:hi], batch.seq_lens_cpu[r]
        )
        torch.testing.assert_close(out[1][lo:hi].double(), want, atol=1e-5, rtol=0)

    # decode rows: attention over exactly what the brute-force rule selects
    q = steps.qkv[1][0]
    tokens = [int(batch.query_start_loc[r]) for r in decode]
    tables = [steps.tables[ROWS[r][0]] for r in decode]
    seq_lens = [batch.seq_lens_cpu[r] for r in decode]
    width = batch.page_table.shape[1]
    view = DecodeView(
        layer=1,
        request_ids=[batch.request_ids[r] for r in decode],
        q=q[tokens],
        kv=kv,
        page_table=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        seq_lens=torch.tensor(seq_lens),
        seq_lens_cpu=seq_lens,
        page_size=PS,
        scale=DIM**-0.5,
    )
    case = ViewCase(view, tables, seq_lens, PS)
    method = methods[1]
    expected = brute_positions(method, case)
    selection = method.select(view)
    if selection is None:
        assert method_name == "dense"
        assert torch.equal(out[1][tokens], plain_out[1][tokens])
    else:
        assert method_name != "dense"
        assert_selection_reads(case, selection, expected)
        assert torch.equal(out[1][tokens], attend_selection(view, selection))
        assert not torch.allclose(out[1][tokens], plain_out[1][tokens], atol=1e-4)
    torch.testing.assert_close(
        out[1][tokens].double(), brute_attend(case, expected), atol=1e-5, rtol=0
    )

    # stats: the decode step of layer 1 only; the other layer's method saw nothing
    read = sum(len(p) for per_head in expected for p in per_head)
    assert methods[0].stats.kv_total == 0 and methods[0].stats.kv_read == 0
    assert method.stats.kv_total == sum(seq_lens) * HKV
    assert method.stats.kv_read == read
    assert method.stats.kv_read_fraction == read / (sum(seq_lens) * HKV)
    if method_name != "dense":
        assert method.stats.kv_read < method.stats.kv_total


def test_backend_plain_kv_pair_reads_densely() -> None:
    """With a bare (k, v) pair instead of a LayerKV there is no layer index: no method runs."""
    steps = two_steps(seed=1)
    inner = get_attention_backend("reference")
    plain = get_attention_backend("reference")
    assert isinstance(inner, PagedAttentionBackend)
    method = StreamingAttention(1, 1)
    backend = SparseAttention(inner, [method])
    outs = []
    for b in (backend, plain):
        pair = (torch.zeros(24 * PS, HKV, DIM), torch.zeros(24 * PS, HKV, DIM))
        for batch, (q, k, v) in zip(steps.batches, steps.qkv):
            b.prepare(batch)
            out = b.forward(q, k, v, pair, batch, DIM**-0.5)
        outs.append(out)
    assert torch.equal(outs[0], outs[1])
    assert method.stats.kv_total == 0


# ---------------------------------------------------------------------------------------------
# 6. bad input: a ValueError naming the option
# ---------------------------------------------------------------------------------------------

BAD: list[tuple[str, Callable[[], object], str]] = [
    ("unknown method", lambda: make_attention_method("nope"), r"attention_method.*'nope'"),
    ("quest budget 1", lambda: QuestAttention(budget=1), r"budget.*>= 2.*got 1"),
    ("quest budget 0", lambda: QuestAttention(budget=0), r"budget.*got 0"),
    ("quest neither", lambda: QuestAttention(), r"budget.*selection_ratio"),
    ("quest both", lambda: QuestAttention(4, 0.5), r"budget.*selection_ratio"),
    ("quest ratio 0", lambda: QuestAttention(selection_ratio=0), r"selection_ratio.*got 0"),
    ("quest ratio 1.5", lambda: QuestAttention(selection_ratio=1.5), r"selection_ratio.*1\.5"),
    ("quest ratio -0.1", lambda: QuestAttention(selection_ratio=-0.1), r"selection_ratio.*-0\.1"),
    ("quest ratio True", lambda: QuestAttention(selection_ratio=True), r"selection_ratio.*True"),
    ("topk ratio 0", lambda: TopKOracleAttention(selection_ratio=0), r"selection_ratio.*got 0"),
    ("topk ratio True", lambda: TopKOracleAttention(selection_ratio=True), r"selection_ratio"),
    ("topk ratio 1.5", lambda: TopKOracleAttention(selection_ratio=1.5), r"selection_ratio"),
    ("topk budget 0", lambda: TopKOracleAttention(budget=0), r"budget.*got 0"),
    ("topk neither", lambda: TopKOracleAttention(), r"budget.*selection_ratio"),
    ("sinks -1", lambda: StreamingAttention(num_sink_tokens=-1), r"num_sink_tokens.*-1"),
    ("window 0", lambda: StreamingAttention(window=0), r"attention_window.*got 0"),
    (
        "config quest alone",
        lambda: EngineConfig(attention_method="quest"),
        r"attention_method.*quest.*budget.*selection_ratio",
    ),
    (
        "config topk both",
        lambda: EngineConfig(attention_method="topk_oracle", budget=4, selection_ratio=0.5),
        r"attention_method.*budget.*selection_ratio",
    ),
    ("config budget 0", lambda: EngineConfig(budget=0), r"budget.*got 0"),
    ("config ratio 2", lambda: EngineConfig(selection_ratio=2.0), r"selection_ratio.*2\.0"),
    ("config sinks -1", lambda: EngineConfig(num_sink_tokens=-1), r"num_sink_tokens.*-1"),
    ("config method", lambda: EngineConfig(attention_method="nope"), r"attention_method.*nope"),
]


@pytest.mark.parametrize("build, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_option(build: Callable[[], object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        build()


def test_good_input_builds() -> None:
    """The boundaries just inside the allowed ranges are accepted (so the refusals are real)."""
    assert type(make_attention_method("dense")) is AttentionMethod
    streaming = make_attention_method("streaming", num_sink_tokens=0, attention_window=1)
    assert isinstance(streaming, StreamingAttention)
    assert (streaming.num_sink_tokens, streaming.window) == (0, 1)
    quest = make_attention_method("quest", budget=2)
    assert isinstance(quest, QuestAttention) and (quest.budget, quest.ratio) == (2, None)
    quest = make_attention_method("quest", selection_ratio=1)
    assert isinstance(quest, QuestAttention) and (quest.budget, quest.ratio) == (None, 1.0)
    oracle = make_attention_method("topk_oracle", budget=1)
    assert isinstance(oracle, TopKOracleAttention) and oracle.budget == 1
    EngineConfig(attention_method="quest", selection_ratio=1.0)
    EngineConfig(attention_method="streaming", num_sink_tokens=0, attention_window=1)


# ---------------------------------------------------------------------------------------------
# 7. ScoreCapture
# ---------------------------------------------------------------------------------------------


def brute_scores(case: ViewCase, row: int) -> torch.Tensor:
    heads = case.view.q.shape[1]
    group = heads // case.view.num_kv_heads
    out = torch.zeros(heads, case.seq_lens[row], dtype=torch.float64)
    for h in range(heads):
        q = case.view.q[row, h].double()
        for pos, s in enumerate(case.slots(row)):
            out[h, pos] = case.view.scale * float(q @ read_k(case.kv, s)[h // group])
    return out


@pytest.mark.parametrize("int8", [False, True])
@pytest.mark.parametrize("page_size, heads, kv_heads", [(1, 2, 2), (4, 6, 2), (5, 4, 1)])
def test_score_capture(int8: bool, page_size: int, heads: int, kv_heads: int) -> None:
    lens = [3, 11, 1, 8]
    case = make_view(
        lens, page_size=page_size, heads=heads, kv_heads=kv_heads, seed=page_size, int8=int8
    )
    case.view.request_ids = [7, 2, 5, 0]
    capture = ScoreCapture()
    capture.capture(case.view)
    assert [(c.request_id, c.layer) for c in capture.records] == [(7, 0), (2, 0), (5, 0), (0, 0)]
    for i, record in enumerate(capture.records):
        assert record.scores.shape == (heads, lens[i])
        torch.testing.assert_close(record.scores.double(), brute_scores(case, i), atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend_name", ["reference", "torch"])
def test_score_capture_through_backend(backend_name: str) -> None:
    """Installed on a backend: one record per decode row of the wanted layers, by request id."""
    steps = two_steps(seed=3)
    pool = KVPool(2, 24, PS, HKV, DIM, torch.float32)
    inner = get_attention_backend(backend_name)
    assert isinstance(inner, PagedAttentionBackend)
    backend = SparseAttention(inner, [AttentionMethod(), StreamingAttention(1, 2)])
    backend.capture = ScoreCapture(frozenset({1}))
    for layer in (0, 1):
        run_steps(backend, pool, layer, steps)
    batch = steps.batches[1]
    decode = [i for i, n in enumerate(batch.query_lens_cpu) if n == 1]
    records = backend.capture.records
    assert [(c.request_id, c.layer) for c in records] == [(10 + r, 1) for r in decode]
    kv = pool.layer(1)
    q = steps.qkv[1][0]
    for record, r in zip(records, decode):
        table, n = steps.tables[ROWS[r][0]], batch.seq_lens_cpu[r]
        qr = q[int(batch.query_start_loc[r])].double()
        want = torch.tensor(
            [
                [
                    DIM**-0.5 * float(qr[h] @ read_k(kv, slot_of(table, p, PS))[h // 2])
                    for p in range(n)
                ]
                for h in range(HQ)
            ],
            dtype=torch.float64,
        )
        torch.testing.assert_close(record.scores.double(), want, atol=1e-5, rtol=0)
