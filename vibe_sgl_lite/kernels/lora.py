"""The segmented LoRA product: every row's own adapter in one pass (Punica's SGMV, S-LoRA).

A batch mixes rows of several adapters and of the base model. The base projection runs once for
all ``T`` tokens; the adapters add ``B[a] @ (A[a] @ x)`` to the tokens of adapter ``a`` only.
The tokens are grouped by adapter slot once per step (``LoRASegments``), and each group is one
small product pair::

    tokens  t0 t1 t2 t3 t4 t5 t6        slot of each token   1  -  2  1  -  2  2   (- = base)
    token_index (grouped)  t0 t3 | t2 t5 t6                  segments: slot 1 [0, 2), slot 2 [2, 5)

    shrink   h[i]   = A[slot] x[token_index[i]]        h: [N, W]  (N LoRA tokens)
    expand   y[token_index[i]] += B[slot] h[i]          y: [T, out], written in place

Base tokens are in no segment: they cost nothing.

The slots of one projection are two stacks, ``A [S, W, in]`` and ``B^T [S, W, out]`` (``B``
stored transposed: a slot's first ``w`` rows of either are one contiguous block). A packed
projection (``qkv_proj``: q, k, v) keeps every output slice of an adapter in one pair: the
slices' ``A`` stacked (``k r`` rows) and a block-diagonal ``B``; the rest of ``W = k R`` (``R``
= ``max_lora_rank``) is zero, which changes nothing. One product pair covers every slice.

Two implementations of the same two products:

* ``triton_shrink``/``triton_expand``: one Triton launch each over every segment
  (``kernels/triton/lora.py``).
* ``torch_shrink``/``torch_expand``: on a CPU the cost of a small product is mostly its call,
  not its arithmetic, so the segments are padded to the longest (``L`` rows) and run as one
  batched product ``[G, L, in] @ [G, in, w]``, ``w`` the widest slot of the step: about eight
  tensor operations per projection whatever the number of adapters. A step that is one segment
  over every token (all rows under one adapter) is two plain products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LoRASegments:
    """The step's LoRA tokens grouped by adapter slot.

    ``token_index [N]`` int64: the tokens that run an adapter, segment by segment.
    ``starts``: ``G + 1`` offsets into ``token_index``; segment ``g`` uses slot ``slots[g]``
    whose adapter's rank is ``ranks[g]``. ``starts_t``/``slots_t``: the same on the device (the
    Triton kernel). ``gather_index [G, L]``: each segment's tokens padded to ``L`` rows with
    ``T`` (a zero row appended to the input); ``scatter_index [G * L]``: the same, padded with
    0 (the padded rows add zeros there). ``backend``: ``"torch"`` or ``"triton"``.
    """

    token_index: torch.Tensor
    starts: list[int]
    slots: list[int]
    ranks: list[int]
    starts_t: torch.Tensor
    slots_t: torch.Tensor
    gather_index: torch.Tensor
    scatter_index: torch.Tensor
    num_tokens_in_step: int
    backend: str = "torch"

    @property
    def num_tokens(self) -> int:
        return self.starts[-1]

    @property
    def covers_all(self) -> bool:
        """One segment holding every token in order: no gather, no scatter needed."""
        return len(self.slots) == 1 and self.num_tokens == self.num_tokens_in_step

    @property
    def slot_range(self) -> slice | None:
        """The slots as one consecutive run (the usual case), so that the stacks are sliced
        rather than gathered; ``None`` otherwise."""
        first = self.slots[0] if self.slots else 0
        if self.slots == list(range(first, first + len(self.slots))):
            return slice(first, first + len(self.slots))
        return None

    @property
    def max_rows(self) -> int:
        """Tokens of the longest segment."""
        return max((b - a for a, b in zip(self.starts, self.starts[1:])), default=0)

    @classmethod
    def build(
        cls,
        slot_of_token: list[int],
        rank_of_slot: list[int],
        device: torch.device,
        backend: str = "torch",
    ) -> LoRASegments:
        """Group ``slot_of_token`` (``-1``: base) by slot, in slot order."""
        by_slot: dict[int, list[int]] = {}
        for t, slot in enumerate(slot_of_token):
            if slot >= 0:
                by_slot.setdefault(slot, []).append(t)
        order, starts, slots = [], [0], []
        for slot in sorted(by_slot):
            order.extend(by_slot[slot])
            starts.append(len(order))
            slots.append(slot)
        num_rows = max((len(rows) for rows in by_slot.values()), default=0)
        pad = len(slot_of_token)
        gather = [by_slot[s] + [pad] * (num_rows - len(by_slot[s])) for s in slots]
        scatter = [t if t != pad else 0 for rows in gather for t in rows]

        def tensor(data: list[int] | list[list[int]]) -> torch.Tensor:
            return torch.tensor(data, dtype=torch.int64, device=device)

        return cls(
            token_index=tensor(order),
            starts=starts,
            slots=slots,
            ranks=[rank_of_slot[s] for s in slots],
            starts_t=tensor(starts),
            slots_t=tensor(slots),
            gather_index=tensor(gather).view(len(slots), num_rows),
            scatter_index=tensor(scatter),
            num_tokens_in_step=len(slot_of_token),
            backend=backend,
        )


def triton_shrink(x: torch.Tensor, a: torch.Tensor, seg: LoRASegments) -> torch.Tensor:
    """``h [N, W]``: row ``i`` is ``A[slot] @ x[token_index[i]]``; ``x: [T, in]``,
    ``a: [S, W, in]``."""
    from vibe_sgl_lite.kernels.triton.lora import segmented_matmul

    h = torch.empty(seg.num_tokens, a.shape[1], dtype=x.dtype, device=x.device)
    segmented_matmul(x, a, h, seg.starts_t, seg.slots_t, seg.max_rows, x_index=seg.token_index)
    return h


def triton_expand(h: torch.Tensor, b_t: torch.Tensor, seg: LoRASegments, out: torch.Tensor) -> None:
    """``out[token_index[i]] += B[slot] @ h[i]`` in place; ``h: [N, W]``, ``b_t: [S, W, n]``,
    ``out: [T, n]`` (a column slice of a wider output is fine)."""
    from vibe_sgl_lite.kernels.triton.lora import segmented_matmul

    b = b_t.transpose(1, 2)
    segmented_matmul(h, b, out, seg.starts_t, seg.slots_t, seg.max_rows, out_index=seg.token_index)


def _slots(stack: torch.Tensor, seg: LoRASegments, width: int) -> torch.Tensor:
    """``[G, width, *]``: the first ``width`` rows of each segment's slot."""
    run = seg.slot_range
    if run is not None:
        return stack[run, :width]
    return stack[:, :width].index_select(0, seg.slots_t)


def torch_shrink(x: torch.Tensor, a: torch.Tensor, seg: LoRASegments, width: int) -> torch.Tensor:
    """``h``: ``A[slot][:width] @ x[t]`` for each LoRA token, ``[T, width]`` when the step is
    one segment over every token, else ``[G, L, width]`` in ``gather_index``'s layout (padded
    rows zero). ``x: [T, in]``, ``a: [S, W, in]``; rows past ``width`` of every slot of the
    step are zero."""
    if seg.covers_all:
        return x @ a[seg.slots[0], :width].T
    xs = F.pad(x, (0, 0, 0, 1))[seg.gather_index]  # [G, L, in], row T is the zero row
    return torch.bmm(xs, _slots(a, seg, width).transpose(1, 2))


def torch_expand(h: torch.Tensor, b_t: torch.Tensor, seg: LoRASegments, out: torch.Tensor) -> None:
    """``out[t] += B[slot][:, :width] @ h`` for each LoRA token, in place (``torch_shrink``'s
    ``h``; ``b_t: [S, W, n]``; ``out: [T, n]``)."""
    width = h.shape[-1]
    if seg.covers_all:
        out.addmm_(h, b_t[seg.slots[0], :width])
        return
    delta = torch.bmm(h, _slots(b_t, seg, width))  # [G, L, n]
    out.index_add_(0, seg.scatter_index, delta.view(-1, out.shape[1]))
