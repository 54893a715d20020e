"""Planning a decode step on the host: how many splits, their scratch, the plan layers reuse.

The decode kernel (``decode.py``) can cut each row's keys into ``num_splits`` pieces whose
partial softmaxes go to fp32 scratch and are merged by a second kernel. How many pieces is a
host decision (``default_num_splits``), and so is where the partials go (``SplitScratch``).
Both depend on the step (its rows, the page table's width) and on the model's heads, never on
the layer, so a step is planned once (``plan_decode``) and every layer launches the same
``DecodePlan`` on its own tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton

from vibe_sgl_lite.kernels.triton.args import HeadShape, PagedIndex

MIN_KEYS_PER_SPLIT = 256
"""A split gets at least this many keys: below that, the extra merge costs more than it buys."""

MAX_SPLITS = 32
"""Upper bound of the default ``num_splits``: caps the scratch and the merge kernel's tile."""


def num_multiprocessors(device: torch.device) -> int:
    """Programs that run at once: the GPU's SM count; 1 elsewhere (the interpreter is serial)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).multi_processor_count)
    return 1


def default_num_splits(num_programs: int, max_kv_len: int, num_sms: int) -> int:
    """How many pieces to cut each row's keys into so that the decode fills the machine.

    ``num_programs = decode_rows * num_kv_heads`` programs run without splitting. If they already
    cover the ``num_sms`` multiprocessors, splitting only adds the merge: 1. Otherwise split
    until there is about one program per multiprocessor, but keep at least
    ``MIN_KEYS_PER_SPLIT`` keys per split (short contexts stay at 1) and at most ``MAX_SPLITS``.
    """
    if num_programs >= num_sms:
        return 1
    to_fill = triton.cdiv(num_sms, num_programs)
    worth_it = max_kv_len // MIN_KEYS_PER_SPLIT
    return max(1, min(to_fill, worth_it, MAX_SPLITS))


class SplitScratch:
    """The fp32 scratch of split-KV partials: one buffer, kept between calls, grown on demand.

    A step's ``(row, query head, split)`` partials take ``rows * heads * splits * (head_dim +
    2)`` floats. The buffer at least doubles when a step needs more and is never shrunk, so all
    layers and steps of a run share one allocation instead of three per layer.
    """

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def partials(
        self, num_rows: int, num_heads: int, num_splits: int, head_dim: int, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views ``m, l [rows, heads, splits]`` and ``acc [rows, heads, splits, head_dim]``.

        With one split the kernel writes no partials; the views are then ``[1, 1, 1]`` stand-ins.
        """
        shape = (num_rows, num_heads, num_splits) if num_splits > 1 else (1, 1, 1)
        n = math.prod(shape)
        need = n * (head_dim + 2)
        buffer = self.buffer
        if buffer is None or buffer.device != device or buffer.numel() < need:
            kept = buffer.numel() if buffer is not None and buffer.device == device else 0
            buffer = self.buffer = torch.empty(
                max(need, 2 * kept), dtype=torch.float32, device=device
            )
        return (
            buffer[:n].view(shape),
            buffer[n : 2 * n].view(shape),
            buffer[2 * n : need].view(*shape, head_dim),
        )


@dataclass(frozen=True)
class DecodePlan:
    """A step's decode launch, all but the layer's own tensors: planned once, run per layer.

    Everything a launch decides on the host (the rows, ``num_splits``, the tile padding, the
    scratch) is fixed here, before the first layer, so a layer's decode is its kernel launches
    and nothing else. That is also the precondition for capturing a decode step in a CUDA graph: a
    replay runs no host code, so no layer may decide anything on the host, and the scratch must
    keep its address between capture and replay (it lives on the backend, sized before capture).
    """

    heads: HeadShape
    index: PagedIndex
    rows: torch.Tensor
    num_splits: int
    group_pad: int  # the query-head tile's rows: tl.dot needs every tile side >= 16 on GPUs
    partials: tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def plan_decode(
    heads: HeadShape,
    index: PagedIndex,
    rows: torch.Tensor,
    device: torch.device,
    num_splits: int | None = None,
    scratch: SplitScratch | None = None,
) -> DecodePlan:
    """Plan the decode of ``rows [Bd]``; ``num_splits`` defaults to ``default_num_splits``."""
    num_rows = rows.shape[0]
    if num_splits is None:
        # The page table's width bounds every row's kv_len without reading seq_lens (no sync).
        num_splits = default_num_splits(
            num_rows * heads.num_kv_heads,
            index.page_table.shape[-1] * index.page_size,
            num_multiprocessors(device),
        )
    if num_splits < 1:
        raise ValueError(f"num_splits: must be >= 1, got {num_splits}")
    scratch = scratch if scratch is not None else SplitScratch()
    return DecodePlan(
        heads=heads,
        index=index,
        rows=rows,
        num_splits=num_splits,
        group_pad=max(16, triton.next_power_of_2(heads.group)),
        partials=scratch.partials(num_rows, heads.num_heads, num_splits, heads.head_dim, device),
    )
