"""Paged extend (prefill) attention in Triton: several new query tokens over a cached prefix.

An extend row has ``q_len >= 1`` new tokens at positions ``seq_len - q_len .. seq_len - 1``; the
``prefix_len = seq_len - q_len`` keys before them come from earlier steps or the prefix cache
(possibly none, possibly every page of the table). Since the step's K/V were stored before
attention runs, all keys, new ones included, are read from the cache through the page table.

Flash-attention style: one program takes a ``BLOCK_M`` block of one row's query tokens for one
query head, walks the row's keys ``BLOCK_N`` at a time and keeps an online softmax in fp32
(running max ``m``, sum ``l``, unnormalised ``acc``), so no ``[q_len, seq_len]`` score matrix is
ever materialised. Causality::

    query i (0-based in the row) sits at position prefix_len + i and sees keys 0 .. prefix_len + i

so the block's keys stop at ``prefix_len + (last query of the block)``, and the mask only bites
in the last, diagonal blocks. Rows have different lengths (varlen): the grid is sized by the
longest query, and programs past their row's ``q_len`` do nothing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vibe_sgl_lite.kernels.triton.decode import (
    check_attention_args,
    dot_operand_dtype,
    load_kv_tile,
    paged_slots,
    scale_args,
)

EXTEND_BLOCK_M = 32
"""Query tokens per program."""

EXTEND_BLOCK_N = 32
"""Keys per step of the key loop."""


@triton.jit
def _extend_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    out_ptr,
    rows_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    page_table_ptr,
    sm_scale,
    page_size,
    group,
    head_dim,
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
    stride_len_row,
    stride_pt_row,
    stride_pt_page,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``(num_extend_rows, num_heads, cdiv(max_query_len, BLOCK_M))``.

    Program ``(b, head, m)`` computes queries ``m * BLOCK_M ..`` of row ``rows[b]`` for one
    query head, reading KV head ``head // group``.
    """
    batch_idx = tl.program_id(0)
    head = tl.program_id(1)
    block_m = tl.program_id(2)
    kv_head = head // group

    row = tl.load(rows_ptr + batch_idx)
    q_start = tl.load(query_start_loc_ptr + row)
    q_len = tl.load(query_start_loc_ptr + row + 1) - q_start
    kv_len = tl.load(seq_lens_ptr + row * stride_len_row)
    prefix_len = kv_len - q_len

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the row
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    m_mask = offs_m < q_len
    d_mask = offs_d < head_dim
    positions = prefix_len + offs_m  # [BLOCK_M]

    q_ptrs = q_ptr + (q_start + offs_m)[:, None] * stride_q_tok + head * stride_q_head
    q = tl.load(
        q_ptrs + offs_d[None, :] * stride_q_dim, mask=m_mask[:, None] & d_mask[None, :], other=0.0
    ).to(DOT_DTYPE)

    m_i = tl.full([BLOCK_M], -1.0e30, dtype=tl.float32)  # finite: exp(m_old - m_new) never NaN
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # Keys this block can see: up to its last query's position (causal), at most kv_len; none
    # when the whole block lies past the row's last query.
    kv_end = tl.minimum(kv_len, prefix_len + (block_m + 1) * BLOCK_M)
    kv_end = tl.where(block_m * BLOCK_M < q_len, kv_end, 0)

    page_list_ptr = page_table_ptr + row * stride_pt_row
    for block_start in range(0, kv_end, BLOCK_N):
        keys = block_start + offs_n
        key_mask = keys < kv_end
        slots = paged_slots(page_list_ptr, stride_pt_page, keys, key_mask, page_size)
        k = load_kv_tile(
            k_cache_ptr,
            k_scale_ptr,
            slots,
            key_mask,
            kv_head,
            offs_d,
            d_mask,
            stride_k_slot,
            stride_k_head,
            stride_k_dim,
            stride_ks_slot,
            stride_ks_head,
            QUANTIZED,
            DOT_DTYPE,
        )
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale  # [BLOCK_M, BLOCK_N]
        visible = key_mask[None, :] & (keys[None, :] <= positions[:, None])
        scores = tl.where(visible, scores, -1.0e30)

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)
        p = tl.where(visible, tl.exp(scores - m_new[:, None]), 0.0)
        l_i = l_i * alpha + tl.sum(p, axis=1)

        v = load_kv_tile(
            v_cache_ptr,
            v_scale_ptr,
            slots,
            key_mask,
            kv_head,
            offs_d,
            d_mask,
            stride_v_slot,
            stride_v_head,
            stride_v_dim,
            stride_vs_slot,
            stride_vs_head,
            QUANTIZED,
            DOT_DTYPE,
        )
        acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision="ieee")
        m_i = m_new

    # Every real query sees at least its own key, so l_i >= 1 there; padding queries (l_i = 0)
    # are not stored, the floor only keeps their division finite.
    result = acc / tl.maximum(l_i, 1.0)[:, None]
    o_ptrs = out_ptr + (q_start + offs_m)[:, None] * stride_o_tok + head * stride_o_head
    tl.store(
        o_ptrs + offs_d[None, :] * stride_o_dim,
        result.to(out_ptr.dtype.element_ty),
        mask=m_mask[:, None] & d_mask[None, :],
    )


def paged_extend_attention(
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
    max_query_len: int,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Causal attention of each extend row's new tokens over its paged keys; ``out`` in place.

    Shapes: ``q, out [T, Hq, D]``; ``k_cache, v_cache [num_slots, Hkv, D]`` (int8 with
    ``k_scale, v_scale [num_slots, Hkv]`` float32); ``rows [Be]`` the rows to compute;
    ``query_start_loc [R + 1]``; ``seq_lens [R]``; ``page_table [R, P]``.

    Row ``r``'s tokens ``query_start_loc[r] .. query_start_loc[r + 1] - 1`` are written, nothing
    else. ``max_query_len`` (a host int, so the launch needs no device sync) must be at least
    the largest ``q_len`` among ``rows``: it sizes the grid.
    """
    shape = check_attention_args(
        q,
        k_cache,
        v_cache,
        out,
        rows,
        query_start_loc,
        seq_lens,
        page_table,
        page_size,
        k_scale,
        v_scale,
        per_head_tables=False,
    )
    if max_query_len < 1:
        raise ValueError(f"max_query_len: must be >= 1, got {max_query_len}")
    num_rows = rows.shape[0]
    if num_rows == 0:
        return

    k_scale_arg, stride_ks_slot, stride_ks_head = scale_args(k_cache, k_scale)
    v_scale_arg, stride_vs_slot, stride_vs_head = scale_args(v_cache, v_scale)
    grid = (num_rows, shape.num_heads, triton.cdiv(max_query_len, EXTEND_BLOCK_M))
    _extend_kernel[grid](
        q,
        k_cache,
        v_cache,
        k_scale_arg,
        v_scale_arg,
        out,
        rows,
        query_start_loc,
        seq_lens,
        page_table,
        scale,
        page_size,
        shape.group,
        shape.head_dim,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        stride_ks_slot,
        stride_ks_head,
        stride_vs_slot,
        stride_vs_head,
        *out.stride(),
        shape.len_strides[0],
        shape.table_strides[0],
        shape.table_strides[2],
        BLOCK_M=EXTEND_BLOCK_M,
        BLOCK_N=EXTEND_BLOCK_N,
        BLOCK_D=shape.block_d,
        QUANTIZED=shape.quantized,
        DOT_DTYPE=dot_operand_dtype(q.dtype),
    )
