"""What the decode and extend kernels share: reading K/V through the page table, online softmax.

Both attention kernels give each program a ``[ROWS, BLOCK_D]`` tile of query vectors that read
one KV head (decode: the ``group`` query heads of one token; extend: ``BLOCK_M`` tokens of one
query head) and walk that head's keys ``BLOCK_N`` at a time::

    slot of key j   = page_table[row, j // page_size] * page_size + j % page_size
    K, V tiles      [BLOCK_N, BLOCK_D]   gathered at those slots, int8 dequantised on load
    scores          [ROWS, BLOCK_N]      = scale * q K^T, keys past a query's position masked
    online softmax  m' = max(m, max_j s_j);  l = l e^(m - m') + sum_j e^(s_j - m')
                    acc = acc e^(m - m') + e^(s - m') V

so no ``[ROWS, kv_len]`` score matrix is ever built, and ``acc / l`` is the softmax-weighted sum
of the values. The state stays in fp32 whatever the input dtype. The walk itself,
``attend_paged_keys``, is the same for both kernels; they differ only in which query vectors
form a tile and where the results go.

The host side's dtype helpers live here too: both launches pick ``tl.dot``'s operand dtype the
same way.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256
"""Largest supported head_dim: a ``[BLOCK, head_dim]`` tile must fit in registers."""

ATTENTION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Dtypes of ``q``, ``out`` and of unquantised caches."""

TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
"""The Triton counterpart of each of ``ATTENTION_DTYPES``."""


def dot_operand_dtype(dtype: torch.dtype) -> tl.dtype:
    """The dtype ``tl.dot`` multiplies in for inputs of ``dtype`` (accumulation is always fp32).

    The input's own dtype (16-bit tensor cores on a GPU), except bfloat16 under the interpreter:
    it keeps bfloat16 as raw uint16 bits and its ``tl.dot`` multiplies those bit patterns
    (triton-lang/triton#11584), so there the operands are widened to float32.
    """
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return tl.float32
    return TRITON_DTYPES[dtype]


@triton.jit
def paged_slots(page_list_ptr, stride_page, keys, key_mask, page_size):
    """Cache slots of ``keys [BLOCK_N]`` (token positions in one row): ``[BLOCK_N]`` int64.

    ``page_list_ptr`` points at this row's (and, for per-head tables, this head's) page list.
    Masked keys read no page-table entry (entries past the row's pages are padding) and get
    slot 0, which the callers never load either.
    """
    pages = tl.load(page_list_ptr + (keys // page_size) * stride_page, mask=key_mask, other=0)
    return pages.to(tl.int64) * page_size + keys % page_size


@triton.jit
def load_kv_tile(
    cache_ptr,
    scale_ptr,
    slots,
    key_mask,
    kv_head,
    offs_d,
    d_mask,
    stride_slot,
    stride_head,
    stride_dim,
    stride_scale_slot,
    stride_scale_head,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Load the ``[BLOCK_N, BLOCK_D]`` K or V tile at ``slots`` for one KV head.

    Masked keys and the padding columns past ``head_dim`` read as 0. With ``QUANTIZED`` the
    cache is int8 with one fp32 scale per ``(slot, head)``: the tile is dequantised here as
    ``int8 * scale``. The tile comes back in ``DOT_DTYPE`` (see ``dot_operand_dtype``), ready
    for ``tl.dot``.
    """
    ptrs = cache_ptr + slots[:, None] * stride_slot + kv_head * stride_head
    tile = tl.load(
        ptrs + offs_d[None, :] * stride_dim, mask=key_mask[:, None] & d_mask[None, :], other=0
    )
    if QUANTIZED:
        scales = tl.load(
            scale_ptr + slots * stride_scale_slot + kv_head * stride_scale_head,
            mask=key_mask,
            other=0.0,
        )
        tile = tile.to(tl.float32) * scales[:, None]
    return tile.to(DOT_DTYPE)


@triton.jit
def online_softmax_update(q, k, v, visible, sm_scale, m_i, l_i, acc, DOT_DTYPE: tl.constexpr):
    """Fold one block of keys into the running ``(m [ROWS], l [ROWS], acc [ROWS, BLOCK_D])``.

    ``q [ROWS, BLOCK_D]``, ``k, v [BLOCK_N, BLOCK_D]``, ``visible [ROWS or 1, BLOCK_N]``: which
    keys each query may see. Masked scores become -1e30, a large finite negative rather than
    -inf, so that ``exp(m_old - m_new)`` is never NaN, and their ``p`` is forced to 0.
    """
    scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale  # [ROWS, BLOCK_N]
    scores = tl.where(visible, scores, -1.0e30)
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    alpha = tl.exp(m_i - m_new)  # rescales what was accumulated under the old max
    p = tl.where(visible, tl.exp(scores - m_new[:, None]), 0.0)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(DOT_DTYPE), v, input_precision="ieee")
    return m_new, l_i, acc


@triton.jit
def attend_paged_keys(
    q,
    positions,
    key_start,
    key_end,
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
    ROWS: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
    QUANTIZED: tl.constexpr,
    DOT_DTYPE: tl.constexpr,
):
    """Attend ``q [ROWS, BLOCK_D]`` to keys ``key_start .. key_end - 1`` of one page list.

    Query ``i`` sits at ``positions[i]`` and sees keys up to that position (causal). Returns the
    online-softmax state ``(m [ROWS], l [ROWS], acc [ROWS, BLOCK_D])``; ``acc / l`` is the
    attention output. An empty key range leaves ``l = acc = 0``.
    """
    m_i = tl.full([ROWS], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([ROWS], dtype=tl.float32)
    acc = tl.zeros([ROWS, BLOCK_D], dtype=tl.float32)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < head_dim
    for block_start in range(key_start, key_end, BLOCK_N):
        keys = block_start + offs_n
        key_mask = keys < key_end
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
        visible = key_mask[None, :] & (keys[None, :] <= positions[:, None])
        m_i, l_i, acc = online_softmax_update(q, k, v, visible, sm_scale, m_i, l_i, acc, DOT_DTYPE)
    return m_i, l_i, acc


@triton.jit
def load_query_tile(
    q_ptr, offsets, mask, stride_dim, head_dim, BLOCK_D: tl.constexpr, DOT_DTYPE: tl.constexpr
):
    """The ``[ROWS, BLOCK_D]`` query tile whose vectors start at ``q_ptr + offsets [ROWS]``.

    Vectors outside ``mask [ROWS]`` and the padding columns past ``head_dim`` read as 0.
    """
    offs_d = tl.arange(0, BLOCK_D)
    ptrs = q_ptr + offsets[:, None] + offs_d[None, :] * stride_dim
    return tl.load(ptrs, mask=mask[:, None] & (offs_d < head_dim)[None, :], other=0.0).to(DOT_DTYPE)


@triton.jit
def store_output_tile(
    out_ptr, offsets, mask, stride_dim, l_i, acc, head_dim, BLOCK_D: tl.constexpr
):
    """Write ``acc / l`` (``[ROWS, BLOCK_D]``) at ``out_ptr + offsets [ROWS]``, where ``mask``.

    ``l >= 1`` as soon as one key was seen (the max key adds ``exp(0)``); it is 0 only for an
    empty key range, whose ``acc`` is 0 too: the floor makes that output 0 rather than NaN.
    """
    offs_d = tl.arange(0, BLOCK_D)
    result = acc / tl.maximum(l_i, 1.0)[:, None]
    tl.store(
        out_ptr + offsets[:, None] + offs_d[None, :] * stride_dim,
        result.to(out_ptr.dtype.element_ty),
        mask=mask[:, None] & (offs_d < head_dim)[None, :],
    )
