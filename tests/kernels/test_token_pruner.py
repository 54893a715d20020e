"""``TokenPruner.plan`` on hand-set scores: the current page is never pruned, the budget holds,
and the lowest-scored tokens go first.

The current page is the one holding the last position, ``length - 1``: it starts at
``(length - 1) // page_size * page_size``. When ``length`` is a multiple of ``page_size`` that
is a full page behind ``length // page_size * page_size``, the case these tests pin down (the
next decode token opens a new page, but the page just filled is still the one being read).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.kernels.sparse.pruning import PruneState, TokenPruner

pytestmark = pytest.mark.unit

RID = 0


def pruner_with_scores(ratio: float, min_tokens: int, scores: list[float]) -> TokenPruner:
    """A pruner that has observed request ``RID`` with these accumulated scores."""
    pruner = TokenPruner(ratio, min_tokens)
    capacity = len(scores)
    pruner.states[RID] = PruneState(
        torch.tensor(scores, dtype=torch.float32), torch.zeros(capacity, dtype=torch.bool)
    )
    return pruner


def current_page_start(length: int, page_size: int) -> int:
    return (length - 1) // page_size * page_size


@st.composite
def pruning_runs(draw: st.DrawFn) -> tuple[int, float, int, list[int], list[float]]:
    """(page_size, ratio, min_tokens, growing lengths of successive steps, scores)."""
    page_size = draw(st.integers(1, 16))
    ratio = draw(st.floats(0.0, 0.95))
    min_tokens = draw(st.integers(1, 32))
    first = draw(st.integers(1, 160))
    steps = draw(st.integers(1, 2 * page_size + 1))
    lengths = list(range(first, first + steps))
    scores = draw(
        st.lists(st.floats(0.0, 100.0, width=32), min_size=lengths[-1], max_size=lengths[-1])
    )
    return page_size, ratio, min_tokens, lengths, scores


@settings(max_examples=200, deadline=None)
@given(pruning_runs())
# the newest tokens least attended, a length on a page boundary: the last page is the cheapest
@example((4, 0.9, 1, [32], [float(64 - i) for i in range(32)]))
@example((8, 0.5, 2, [15, 16, 17], [float(100 - i) for i in range(17)]))
def test_plan_never_prunes_the_current_page(
    run: tuple[int, float, int, list[int], list[float]],
) -> None:
    """Decode steps of one request: each ``plan`` prunes only whole-context positions before
    the current page, never below its budget, and the lowest-scored candidates first."""
    page_size, ratio, min_tokens, lengths, scores = run
    pruner = pruner_with_scores(ratio, min_tokens, scores)
    state = pruner.states[RID]
    for length in lengths:
        before = state.pruned.clone()
        newly = pruner.plan(RID, length, page_size)
        start = current_page_start(length, page_size)
        assert all(p < start for p in newly), (length, page_size, newly)
        assert not state.pruned[start:length].any()
        assert sorted(newly) == newly and not before[newly].any()
        assert int(state.pruned.sum()) == state.num_pruned == int(before.sum()) + len(newly)
        keep = max(min_tokens, math.ceil((1.0 - ratio) * length))
        kept = length - state.num_pruned
        candidates_left = int((~state.pruned[:start]).sum())
        if newly:
            assert kept >= keep  # pruned down to the budget, not past it
            assert kept == keep or candidates_left == 0
            # no unpruned candidate scores lower than a token pruned in this step
            lowest_dropped = state.scores[newly].max()
            remaining = state.scores[:start][~state.pruned[:start]]
            assert remaining.numel() == 0 or bool((remaining >= lowest_dropped).all())


@pytest.mark.parametrize("page_size", [1, 2, 4, 16])
@pytest.mark.parametrize("pages", [1, 2, 5])
@pytest.mark.parametrize("offset", [0, 1])  # on a page boundary, and one token past it
def test_the_least_attended_current_page_is_kept(page_size: int, pages: int, offset: int) -> None:
    """With the newest tokens scored lowest, everything before the current page goes (budget
    1) and the whole current page stays, including a full one that ends at ``length``."""
    length = pages * page_size + offset
    scores = [float(length - i) for i in range(length)]  # strictly decreasing
    pruner = pruner_with_scores(0.99, 1, scores)  # budget: 1 token
    newly = pruner.plan(RID, length, page_size)
    start = current_page_start(length, page_size)
    assert newly == list(range(start))
    assert pruner.states[RID].num_pruned == start
