"""``LoRALinear``: a projection of the base model plus the batch's adapters, row by row.

    y = base(x)                                   once, for every token of the step
    y[tokens of adapter a] += B_a (A_a x)         grouped by slot (kernels/lora.py: shrink,
                                                  then expand, one product pair per step)

A packed projection (``qkv_proj``: q, k, v; ``gate_up_proj``: gate, up) has one ``(A, B)`` per
output slice in the adapter. A slot keeps them as one pair: the slices' ``A`` stacked into
``[k r, in]`` and a block-diagonal ``B [out, k r]``, zero-padded to ``k R`` in the stacks
``A [S, k R, in]``, ``B^T [S, k R, out]`` (``R = max_lora_rank``). A slice the adapter leaves
alone is absent from its pair.

``LoRAManager`` installs one in place of each adapted projection, and only when LoRA is enabled,
so the decoder's code never mentions adapters and an engine without them runs none of this.
``base`` may be any module the loader left there: a float ``nn.Linear``, a ``QuantizedLinear``
(int8 weights; the adapters stay in the activations' dtype on top) or a tensor-parallel shard.

Tensor parallelism (Megatron's split, as S-LoRA does it):

* column-parallel base (``qkv_proj``, ``gate_up_proj``: output rows split): ``A`` replicated,
  ``B`` split by output rows like the base, so each rank adds to its own columns;
* row-parallel base (``o_proj``, ``down_proj``: input columns split, all-reduced): ``A`` split by
  input columns like the base, the small shrink output all-reduced, ``B`` replicated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vibe_sgl_lite.kernels.lora import (
    LoRASegments,
    torch_expand,
    torch_shrink,
    triton_expand,
    triton_shrink,
)

SliceWeights = dict[int, tuple[torch.Tensor, torch.Tensor]]
"""``{output slice: (A [r, in], B [out, r])}`` of one adapter in one projection."""


@dataclass
class LoRAStep:
    """The current step's token grouping, shared by every ``LoRALinear`` of one model.

    ``segments`` is ``None`` when no row of the step runs an adapter."""

    segments: LoRASegments | None = None


class LoRALinear(nn.Module):
    """``base(x)`` plus each token's adapter; ``x: [T, in] -> [T, sum(out_sizes)]``.

    ``out_sizes``: this rank's output width of each slice; ``in_features``: its input width.
    The shard this rank holds is read from ``base.checkpoint_slices`` (``models/weights.py``)."""

    def __init__(
        self,
        base: nn.Module,
        in_features: int,
        out_sizes: list[int],
        step: LoRAStep,
        num_slots: int,
        max_rank: int,
        backend: str,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__()
        self.base, self.step, self.backend = base, step, backend
        self.out_sizes = out_sizes
        shards = getattr(base, "checkpoint_slices", {}).get("weight")
        self.out_rows = [(0, n) for n in out_sizes]
        self.in_cols: tuple[int, int] | None = None
        self.group = None
        if shards is not None and shards[0][0] == 0:  # column-parallel
            self.out_rows = [(start, length) for _, start, length in shards]
        elif shards is not None:  # row-parallel
            self.in_cols, self.group = (shards[0][1], shards[0][2]), getattr(base, "group")
        width = len(out_sizes) * max_rank
        self.a = torch.zeros(num_slots, width, in_features, dtype=dtype, device=device)
        self.b_t = torch.zeros(num_slots, width, sum(out_sizes), dtype=dtype, device=device)
        self.width = [0] * num_slots  # rows of a (columns of b) each slot's adapter uses

    @torch.no_grad()
    def load_slot(self, slot: int, weights: SliceWeights) -> None:
        """Put an adapter's full (unsharded) ``{slice: (A [r, in], B [out, r])}`` in ``slot``,
        this rank's part of it."""
        self.a[slot].zero_()
        self.b_t[slot].zero_()
        offsets = [sum(self.out_sizes[:i]) for i in range(len(self.out_sizes))]
        column = 0
        for index, (a, b) in sorted(weights.items()):
            if self.in_cols is not None:
                a = a[:, self.in_cols[0] : self.in_cols[0] + self.in_cols[1]]
            start, length = self.out_rows[index]
            rank = a.shape[0]
            self.a[slot, column : column + rank].copy_(a)
            rows = slice(offsets[index], offsets[index] + length)
            self.b_t[slot, column : column + rank, rows].copy_(b[start : start + length].T)
            column += rank
        self.width[slot] = column

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y: torch.Tensor = self.base(x)
        seg = self.step.segments
        if seg is None:
            return y
        width = max(self.width[slot] for slot in seg.slots)
        if width == 0:
            return y  # no adapter of the step touches this projection
        if self.backend == "triton":
            h = triton_shrink(x, self.a, seg)
            if self.group is not None:
                h = self.group.all_reduce(h)
            triton_expand(h, self.b_t, seg, y)
            return y
        h = torch_shrink(x, self.a, seg, width)
        if self.group is not None:
            h = self.group.all_reduce(h)
        torch_expand(h, self.b_t, seg, y)
        return y
