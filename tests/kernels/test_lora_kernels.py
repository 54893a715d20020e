"""The segmented LoRA product (``kernels/lora.py``): torch and Triton against a per-token loop.

The reference adds ``B[slot] @ (A[slot] @ x[t])`` token by token in float64, with each slot's
own rank; base tokens (slot -1) must come out exactly as they went in. The Triton kernel runs
under the interpreter on CPU (``TRITON_INTERPRET=1``), like the attention kernels. The output is
a column slice of a wider tensor, as the q/k/v parts of ``qkv_proj`` are.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels import triton

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.kernels.lora import (
    LoRASegments,
    torch_expand,
    torch_shrink,
    triton_expand,
    triton_shrink,
)

pytestmark = pytest.mark.kernels
DEVICE = torch.device("cpu" if os.environ["TRITON_INTERPRET"] == "1" else "cuda")


def make_slots(
    num_slots: int, max_rank: int, ranks: list[int], k: int, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``A [S, R, k]``, ``B [S, n, R]``, zero past each slot's rank (as slots are kept)."""
    a = torch.randn(num_slots, max_rank, k, device=DEVICE)
    b = torch.randn(num_slots, n, max_rank, device=DEVICE)
    for slot, rank in enumerate(ranks):
        a[slot, rank:] = 0
        b[slot, :, rank:] = 0
    return a, b


def reference(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, slots: list[int], y: torch.Tensor
) -> torch.Tensor:
    out = y.double().clone()
    for t, slot in enumerate(slots):
        if slot >= 0:
            out[t] += b[slot].double() @ (a[slot].double() @ x[t].double())
    return out


def apply(
    x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, seg: LoRASegments, out: torch.Tensor
) -> None:
    """Shrink then expand on ``seg``'s path (the torch one over the full width)."""
    b_t = b.transpose(1, 2).contiguous()
    if seg.backend == "triton":
        triton_expand(triton_shrink(x, a, seg), b_t, seg, out)
    else:
        torch_expand(torch_shrink(x, a, seg, a.shape[1]), b_t, seg, out)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@settings(max_examples=12, deadline=None)
@given(data=st.data())
def test_segmented_lora_matches_per_token_loop(backend: str, data: st.DataObject) -> None:
    num_slots = data.draw(st.integers(1, 4))
    max_rank = data.draw(st.sampled_from([4, 8, 16]))
    ranks = data.draw(st.lists(st.integers(1, max_rank), min_size=num_slots, max_size=num_slots))
    num_tokens = data.draw(st.integers(1, 40))
    # one slot for every token (no gather, no scatter) is a case of its own: draw it often
    slots = data.draw(
        st.one_of(
            st.lists(st.integers(-1, num_slots - 1), min_size=num_tokens, max_size=num_tokens),
            st.integers(0, num_slots - 1).map(lambda s: [s] * num_tokens),
        )
    )
    k, n = data.draw(st.sampled_from([(16, 24), (40, 8), (64, 48)]))
    torch.manual_seed(data.draw(st.integers(0, 1000)))
    a, b = make_slots(num_slots, max_rank, ranks, k, n)
    x = torch.randn(num_tokens, k, device=DEVICE)
    wide = torch.randn(num_tokens, n + 10, device=DEVICE)
    expected = reference(x, a, b, slots, wide[:, 5 : 5 + n])
    seg = LoRASegments.build(slots, ranks, DEVICE, backend)
    before = wide.clone()
    apply(x, a, b, seg, wide[:, 5 : 5 + n])
    torch.testing.assert_close(wide[:, 5 : 5 + n].double(), expected, atol=1e-4, rtol=1e-5)
    assert torch.equal(wide[:, :5], before[:, :5]) and torch.equal(
        wide[:, 5 + n :], before[:, 5 + n :]
    )


def test_segments_group_tokens_by_slot() -> None:
    seg = LoRASegments.build([1, -1, 0, 1, -1, 0, 0], [4, 2], torch.device("cpu"))
    assert seg.token_index.tolist() == [2, 5, 6, 0, 3]
    assert seg.starts == [0, 3, 5] and seg.slots == [0, 1] and seg.ranks == [4, 2]
    assert seg.max_rows == 3 and not seg.covers_all and seg.slot_range == slice(0, 2)
    assert LoRASegments.build([2, 0], [4, 2, 4], torch.device("cpu")).slot_range is None
    assert LoRASegments.build([1, 1, 1], [4, 2], torch.device("cpu")).covers_all


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_a_batch_of_base_tokens_only_is_left_alone(backend: str) -> None:
    a, b = make_slots(2, 4, [4, 4], 16, 8)
    y = torch.randn(5, 8, device=DEVICE)
    seg = LoRASegments.build([-1] * 5, [4, 4], DEVICE, backend)
    before = y.clone()
    apply(torch.randn(5, 16, device=DEVICE), a, b, seg, y)
    assert torch.equal(y, before)
