"""Paged decode attention in Triton: one query token per row, flash-decoding over split KV.

A decode row has a single new query token that attends to all ``seq_len`` keys of its row. The
work per row is small and purely memory bound (each K/V byte is read once), so the kernel is
organised around two ideas:

* **GQA sharing.** One program handles one ``(row, kv_head)`` pair and loads every K/V block
  *once* for all ``group = num_heads // num_kv_heads`` query heads that read it: the query is a
  ``[GROUP_PAD, BLOCK_D]`` tile and the scores a ``[GROUP_PAD, BLOCK_N]`` matmul.
* **Split KV (flash-decoding).** With few rows and long contexts, ``rows * kv_heads`` programs
  leave most of the GPU idle. The key range is then cut into ``num_splits`` pieces, each program
  writes a partial softmax (running max ``m``, sum of exponentials ``l`` and the unnormalised
  ``acc = sum_j exp(s_j - m) v_j``) to fp32 scratch, and a second kernel merges the pieces::

      M = max_s m_s,   out = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s

Keys are read through the page table (``common.attend_paged_keys``, shared with ``extend.py``),
so any ``page_size >= 1`` works. The page table may also hold one page list per KV head
(``[R, Hkv, P]``, with ``seq_lens [R, Hkv]``), for sparse attention that keeps different pages
per head; the shared ``[R, P]`` table is the same kernel with a head stride of 0.

On the host a step's launch is planned once (``plan_decode``: rows, splits, scratch) and every
layer reuses the plan (``launch_decode``); ``paged_decode_attention`` does both per call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vibe_sgl_lite.kernels.triton.args import (
    check_index_args,
    check_layer_args,
    layer_launch_args,
)
from vibe_sgl_lite.kernels.triton.common import (
    attend_paged_keys,
    load_query_tile,
    store_output_tile,
)
from vibe_sgl_lite.kernels.triton.decode_plan import (
    MAX_SPLITS,
    DecodePlan,
    default_num_splits,
    plan_decode,
)

__all__ = [
    "MAX_SPLITS",
    "DecodePlan",
    "default_num_splits",
    "launch_decode",
    "paged_decode_attention",
    "plan_decode",
]

DECODE_BLOCK_N = 64
"""Keys per step of the decode loop."""


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    out_ptr,
    stride_q_tok,
    stride_q_head,
    stride_q_dim,
    stride_k_slot,
    stride_k_head,
    stride_k_dim,
    stride_v_slot,
    stride_v_head,
    stride_v_dim,
    stride_ks_slot,
    stride_ks_head,
    stride_vs_slot,
    stride_vs_head,
    stride_o_tok,
    stride_o_head,
    stride_o_dim,
    query_start_loc_ptr,
    seq_lens_ptr,
    page_table_ptr,
    page_size,
    stride_len_row,
    stride_len_head,
    stride_pt_row,
    stride_pt_head,
    stride_pt_page,
    rows_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    sm_scale,
    group,
    num_heads,
    head_dim,
    NUM_SPLITS: tl.constexpr,
    GROUP_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``(num_decode_rows, num_kv_heads, NUM_SPLITS)``: one split of one KV head's keys.

    Attends the ``group`` query heads of KV head ``kv_head`` to keys
    ``[split * chunk, min((split + 1) * chunk, seq_len))`` of the row, ``chunk`` being
    ``seq_len / NUM_SPLITS`` rounded up to whole ``BLOCK_N`` blocks. With one split the result is
    final and goes straight to ``out``; otherwise the partial ``(m, l, acc)`` goes to scratch
    laid out ``[num_decode_rows, num_heads, NUM_SPLITS (, head_dim)]``.
    """
    batch_idx = tl.program_id(0)
    kv_head = tl.program_id(1)
    split = tl.program_id(2)

    row = tl.load(rows_ptr + batch_idx)
    token = tl.load(query_start_loc_ptr + row)
    kv_len = tl.load(seq_lens_ptr + row * stride_len_row + kv_head * stride_len_head)
    page_list_ptr = page_table_ptr + row * stride_pt_row + kv_head * stride_pt_head

    keys_per_split = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_start = split * keys_per_split
    split_end = tl.minimum(split_start + keys_per_split, kv_len)

    offs_g = tl.arange(0, GROUP_PAD)
    g_mask = offs_g < group
    heads = kv_head * group + offs_g  # the query heads sharing this KV head
    q_offsets = token * stride_q_tok + heads * stride_q_head
    q = load_query_tile(q_ptr, q_offsets, g_mask, stride_q_dim, head_dim, BLOCK_D, DOT_DTYPE)
    # The new token comes after every key of its row, so causality masks nothing here.
    positions = tl.zeros([GROUP_PAD], dtype=tl.int64) + (kv_len - 1)

    m_i, l_i, acc = attend_paged_keys(
        q,
        positions,
        split_start,
        split_end,
        sm_scale,
        page_list_ptr,
        stride_pt_page,
        page_size,
        kv_head,
        head_dim,
        k_cache_ptr,
        v_cache_ptr,
        k_scale_ptr,
        v_scale_ptr,
        stride_k_slot,
        stride_k_head,
        stride_k_dim,
        stride_v_slot,
        stride_v_head,
        stride_v_dim,
        stride_ks_slot,
        stride_ks_head,
        stride_vs_slot,
        stride_vs_head,
        GROUP_PAD,
        BLOCK_N,
        BLOCK_D,
        QUANTIZED,
        DOT_DTYPE,
    )

    if NUM_SPLITS == 1:
        o_offsets = token * stride_o_tok + heads * stride_o_head
        store_output_tile(out_ptr, o_offsets, g_mask, stride_o_dim, l_i, acc, head_dim, BLOCK_D)
    else:
        offs_d = tl.arange(0, BLOCK_D)
        part = (batch_idx * num_heads + heads) * NUM_SPLITS + split  # [GROUP_PAD]
        tl.store(part_m_ptr + part, m_i, mask=g_mask)
        tl.store(part_l_ptr + part, l_i, mask=g_mask)
        tl.store(
            part_acc_ptr + part[:, None] * head_dim + offs_d[None, :],
            acc,
            mask=g_mask[:, None] & (offs_d < head_dim)[None, :],
        )


@triton.jit
def _decode_merge_kernel(
    out_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    rows_ptr,
    query_start_loc_ptr,
    num_heads,
    head_dim,
    stride_o_tok,
    stride_o_head,
    stride_o_dim,
    NUM_SPLITS: tl.constexpr,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid ``(num_decode_rows, num_heads)``: merge one query head's ``NUM_SPLITS`` partials.

    Each split's ``(m_s, l_s, acc_s)`` is rescaled to the common max ``M``; an empty split
    (``m_s`` still at its -1e30 start) gets weight ``exp(m_s - M) = 0``.
    """
    batch_idx = tl.program_id(0)
    head = tl.program_id(1)
    row = tl.load(rows_ptr + batch_idx)
    token = tl.load(query_start_loc_ptr + row)

    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, BLOCK_D)
    s_mask = offs_s < NUM_SPLITS
    d_mask = offs_d < head_dim
    part = (batch_idx * num_heads + head) * NUM_SPLITS + offs_s  # [BLOCK_S]

    m = tl.load(part_m_ptr + part, mask=s_mask, other=-1.0e30)
    l = tl.load(part_l_ptr + part, mask=s_mask, other=0.0)
    acc = tl.load(
        part_acc_ptr + part[:, None] * head_dim + offs_d[None, :],
        mask=s_mask[:, None] & d_mask[None, :],
        other=0.0,
    )

    weight = tl.exp(m - tl.max(m, axis=0))  # [BLOCK_S]
    total = tl.sum(weight * l, axis=0)
    result = tl.sum(weight[:, None] * acc, axis=0) / tl.maximum(total, 1.0)  # see split kernel

    o_ptrs = out_ptr + token * stride_o_tok + head * stride_o_head + offs_d * stride_o_dim
    tl.store(o_ptrs, result.to(out_ptr.dtype.element_ty), mask=d_mask)


def launch_decode(
    plan: DecodePlan,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Run ``plan`` on one layer's (already checked) tensors: the split kernel, then the merge."""
    heads, num_rows, num_splits = plan.heads, plan.rows.shape[0], plan.num_splits
    _decode_split_kernel[(num_rows, heads.num_kv_heads, num_splits)](
        *layer_launch_args(q, k_cache, v_cache, k_scale, v_scale, out),
        *plan.index.launch_args,
        plan.rows,
        *plan.partials,
        scale,
        heads.group,
        heads.num_heads,
        heads.head_dim,
        NUM_SPLITS=num_splits,
        GROUP_PAD=plan.group_pad,
        BLOCK_N=DECODE_BLOCK_N,
        BLOCK_D=heads.block_d,
        QUANTIZED=heads.quantized,
        DOT_DTYPE=heads.dot_dtype,
    )
    if num_splits > 1:
        _decode_merge_kernel[(num_rows, heads.num_heads)](
            out,
            *plan.partials,
            plan.rows,
            plan.index.query_start_loc,
            heads.num_heads,
            heads.head_dim,
            *out.stride(),
            NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=heads.block_d,
        )


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    rows: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    page_size: int,
    scale: float,
    *,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
) -> None:
    """Attend each decode row's single query token to its paged keys; write ``out`` in place.

    Shapes: ``q, out [T, Hq, D]``; ``k_cache, v_cache [num_slots, Hkv, D]`` (int8 with
    ``k_scale, v_scale [num_slots, Hkv]`` float32); ``rows [Bd]`` the rows to compute, each with
    exactly one query token at ``query_start_loc[row]`` (``query_start_loc [R + 1]``);
    ``seq_lens [R]`` or ``[R, Hkv]``; ``page_table [R, P]`` or ``[R, Hkv, P]``.

    ``out[t] = softmax(scale * q[t] K^T) V`` over keys ``0 .. seq_len - 1`` of the row; only the
    tokens of ``rows`` are written. ``num_splits`` cuts each row's keys into that many pieces
    merged by a second kernel (default: ``default_num_splits``). Checks every argument and
    plans afresh on each call; the backend checks and plans once per step instead.
    """
    heads = check_layer_args(q, k_cache, v_cache, out, k_scale, v_scale)
    index = check_index_args(
        (rows,),
        query_start_loc,
        seq_lens,
        page_table,
        page_size,
        q.device,
        per_head_tables=heads.num_kv_heads,
    )
    if rows.shape[0] == 0:
        return
    plan = plan_decode(heads, index, rows, q.device, num_splits)
    launch_decode(plan, q, k_cache, v_cache, out, scale, k_scale, v_scale)
