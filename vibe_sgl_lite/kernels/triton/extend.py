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

from vibe_sgl_lite.kernels.triton.args import (
    HeadShape,
    PagedIndex,
    check_index_args,
    check_layer_args,
    layer_launch_args,
)
from vibe_sgl_lite.kernels.triton.common import (
    attend_paged_keys,
    load_query_tile,
    store_output_tile,
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
    sm_scale,
    group,
    head_dim,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Grid ``(num_extend_rows, num_heads, cdiv(max_query_len, BLOCK_M))``.

    Program ``(b, head, m)`` computes queries ``m * BLOCK_M ..`` of row ``rows[b]`` for one
    query head, reading KV head ``head // group``. The head strides of ``seq_lens`` and the
    page table are 0: every head of a row reads the same keys.
    """
    batch_idx = tl.program_id(0)
    head = tl.program_id(1)
    block_m = tl.program_id(2)
    kv_head = head // group

    row = tl.load(rows_ptr + batch_idx)
    q_start = tl.load(query_start_loc_ptr + row)
    q_len = tl.load(query_start_loc_ptr + row + 1) - q_start
    kv_len = tl.load(seq_lens_ptr + row * stride_len_row + kv_head * stride_len_head)
    page_list_ptr = page_table_ptr + row * stride_pt_row + kv_head * stride_pt_head
    prefix_len = kv_len - q_len

    offs_m = block_m * BLOCK_M + tl.arange(0, BLOCK_M)  # query index within the row
    m_mask = offs_m < q_len
    tokens = q_start + offs_m
    q_offsets = tokens * stride_q_tok + head * stride_q_head
    q = load_query_tile(q_ptr, q_offsets, m_mask, stride_q_dim, head_dim, BLOCK_D, DOT_DTYPE)

    # Keys this block can see: up to its last query's position (causal), at most kv_len; none
    # when the whole block lies past the row's last query.
    kv_end = tl.minimum(kv_len, prefix_len + (block_m + 1) * BLOCK_M)
    kv_end = tl.where(block_m * BLOCK_M < q_len, kv_end, 0)

    m_i, l_i, acc = attend_paged_keys(
        q,
        prefix_len + offs_m,
        0,
        kv_end,
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
        BLOCK_M,
        BLOCK_N,
        BLOCK_D,
        QUANTIZED,
        DOT_DTYPE,
    )
    # Every real query sees at least its own key, so l_i >= 1 there; padding queries (l_i = 0)
    # are not stored.
    o_offsets = tokens * stride_o_tok + head * stride_o_head
    store_output_tile(out_ptr, o_offsets, m_mask, stride_o_dim, l_i, acc, head_dim, BLOCK_D)


def launch_extend(
    heads: HeadShape,
    index: PagedIndex,
    rows: torch.Tensor,
    max_query_len: int,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    scale: float,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Launch the extend kernel on (already checked) arguments: no checks, no allocation."""
    grid = (rows.shape[0], heads.num_heads, triton.cdiv(max_query_len, EXTEND_BLOCK_M))
    _extend_kernel[grid](
        *layer_launch_args(q, k_cache, v_cache, k_scale, v_scale, out),
        *index.launch_args,
        rows,
        scale,
        heads.group,
        heads.head_dim,
        BLOCK_M=EXTEND_BLOCK_M,
        BLOCK_N=EXTEND_BLOCK_N,
        BLOCK_D=heads.block_d,
        QUANTIZED=heads.quantized,
        DOT_DTYPE=heads.dot_dtype,
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
    the largest ``q_len`` among ``rows``: it sizes the grid. Checks every argument on each
    call; the backend checks once per step instead.
    """
    heads = check_layer_args(q, k_cache, v_cache, out, k_scale, v_scale)
    index = check_index_args((rows,), query_start_loc, seq_lens, page_table, page_size, q.device)
    if max_query_len < 1:
        raise ValueError(f"max_query_len: must be >= 1, got {max_query_len}")
    if rows.shape[0] == 0:
        return
    launch_extend(
        heads, index, rows, max_query_len, q, k_cache, v_cache, out, scale, k_scale, v_scale
    )
