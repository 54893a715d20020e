"""The segmented LoRA product as one Triton launch (``kernels/lora.py`` explains the segments).

One kernel serves both halves of ``B (A x)``: ``y[rows_out] (+)= x[rows_in] @ W[slot]^T`` for
each segment, where the rows are either gathered/scattered through ``token_index`` or taken in
segment order:

    shrink   x = the step's hidden states (gathered),  W = A [S, R, in],  y = h [N, R]
    expand   x = h (segment order),  W = B [S, out, R],  y = the layer output (scattered, +=)

The grid is ``(segment, block of its rows, block of output columns)``; a program whose row block
lies past its segment's end exits at once, so segments of any length share one launch. Every
output element belongs to exactly one program: the expand adds without atomics.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_M = 16
BLOCK_N = 32
BLOCK_K = 32


@triton.jit
def _segmented_matmul_kernel(
    x_ptr,
    w_ptr,
    y_ptr,
    x_index_ptr,
    y_index_ptr,
    starts_ptr,
    slots_ptr,
    N,
    K,
    stride_xm,
    stride_xk,
    stride_ws,
    stride_wn,
    stride_wk,
    stride_ym,
    stride_yn,
    GATHER_X: tl.constexpr,
    SCATTER_Y: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    seg = tl.program_id(0)
    start = tl.load(starts_ptr + seg)
    end = tl.load(starts_ptr + seg + 1)
    row0 = start + tl.program_id(1) * BLOCK_M
    if row0 >= end:
        return
    slot = tl.load(slots_ptr + seg)
    rows = row0 + tl.arange(0, BLOCK_M)
    row_mask = rows < end
    cols = tl.program_id(2) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_mask = cols < N
    if GATHER_X:
        x_rows = tl.load(x_index_ptr + rows, mask=row_mask, other=0)
    else:
        x_rows = rows
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_mask = ks < K
        x = tl.load(
            x_ptr + x_rows[:, None] * stride_xm + ks[None, :] * stride_xk,
            mask=row_mask[:, None] & k_mask[None, :],
            other=0.0,
        )
        w = tl.load(
            w_ptr + slot * stride_ws + cols[None, :] * stride_wn + ks[:, None] * stride_wk,
            mask=k_mask[:, None] & col_mask[None, :],
            other=0.0,
        )
        acc += tl.dot(x.to(tl.float32), w.to(tl.float32))
    if SCATTER_Y:
        y_rows = tl.load(y_index_ptr + rows, mask=row_mask, other=0)
    else:
        y_rows = rows
    y_ptrs = y_ptr + y_rows[:, None] * stride_ym + cols[None, :] * stride_yn
    mask = row_mask[:, None] & col_mask[None, :]
    if SCATTER_Y:
        acc += tl.load(y_ptrs, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask)


def segmented_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    y: torch.Tensor,
    starts: torch.Tensor,
    slots: torch.Tensor,
    max_rows: int,
    *,
    x_index: torch.Tensor | None = None,
    out_index: torch.Tensor | None = None,
) -> None:
    """For each segment ``g`` and row ``i`` in ``[starts[g], starts[g+1])``:
    ``y[out_index[i]] += x[i] @ w[slots[g]]^T`` if ``out_index`` is given (expand), else
    ``y[i] = x[x_index[i]] @ w[slots[g]]^T`` (shrink).

    ``x: [*, K]``, ``w: [S, N, K]``, ``y: [*, N]`` (any strides: a column slice is fine),
    ``starts: [G + 1]``, ``slots: [G]`` int64 on ``x``'s device; ``max_rows``: the longest
    segment (known on the host, so the launch needs no device sync)."""
    num_segments = slots.shape[0]
    if num_segments == 0:
        return
    if w.shape[2] != x.shape[1] or w.shape[1] != y.shape[1]:
        raise ValueError(
            f"segmented_matmul: x {tuple(x.shape)}, w {tuple(w.shape)} and y {tuple(y.shape)} "
            "do not fit (x [*, K], w [S, N, K], y [*, N])"
        )
    n_out, k = w.shape[1], w.shape[2]
    grid = (num_segments, triton.cdiv(max(max_rows, 1), BLOCK_M), triton.cdiv(n_out, BLOCK_N))
    dummy = starts  # an int64 pointer for the index that a variant does not read
    _segmented_matmul_kernel[grid](
        x,
        w,
        y,
        x_index if x_index is not None else dummy,
        out_index if out_index is not None else dummy,
        starts,
        slots,
        n_out,
        k,
        x.stride(0),
        x.stride(1),
        w.stride(0),
        w.stride(1),
        w.stride(2),
        y.stride(0),
        y.stride(1),
        GATHER_X=x_index is not None,
        SCATTER_Y=out_index is not None,
        BLOCK_M=BLOCK_M,
        BLOCK_N=BLOCK_N,
        BLOCK_K=BLOCK_K,
    )
