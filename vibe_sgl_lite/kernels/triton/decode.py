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

Keys are read through the page table: key ``j`` of a row lives at slot
``page_table[row, j // page_size] * page_size + j % page_size``, computed per key inside the
kernel, so any ``page_size >= 1`` works (1, 5, 12, 16 ...). The page table may also hold one page
list per KV head (``[R, Hkv, P]``, with ``seq_lens [R, Hkv]``), for sparse attention that keeps
different pages per head; the shared ``[R, P]`` table is the same kernel with a head stride of 0.

The helpers ``paged_slots``, ``load_kv_tile`` and ``check_attention_args`` are shared with the
extend kernel (``extend.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

MAX_HEAD_DIM = 256
"""Largest supported head_dim: a ``[BLOCK, head_dim]`` tile must fit in registers."""

ATTENTION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Dtypes of ``q``, ``out`` and of unquantised caches."""

TRITON_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
"""The Triton counterpart of each of ``ATTENTION_DTYPES``."""

DECODE_BLOCK_N = 64
"""Keys per step of the decode loop."""

MIN_KEYS_PER_SPLIT = 256
"""A split gets at least this many keys: below that, the extra merge costs more than it buys."""

MAX_SPLITS = 32
"""Upper bound of the default ``num_splits``: caps the scratch and the merge kernel's tile."""


# --------------------------------------------------------------------------------------------
# Shared device helpers: reading K/V through the page table.
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Decode kernels.
# --------------------------------------------------------------------------------------------


@triton.jit
def _decode_split_kernel(
    q_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    out_ptr,
    part_m_ptr,
    part_l_ptr,
    part_acc_ptr,
    rows_ptr,
    query_start_loc_ptr,
    seq_lens_ptr,
    page_table_ptr,
    sm_scale,
    page_size,
    group,
    num_heads,
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
    stride_len_head,
    stride_pt_row,
    stride_pt_head,
    stride_pt_page,
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

    keys_per_split = tl.cdiv(tl.cdiv(kv_len, NUM_SPLITS), BLOCK_N) * BLOCK_N
    split_start = split * keys_per_split
    split_end = tl.minimum(split_start + keys_per_split, kv_len)

    offs_g = tl.arange(0, GROUP_PAD)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    g_mask = offs_g < group
    d_mask = offs_d < head_dim
    heads = kv_head * group + offs_g  # the query heads sharing this KV head

    q_ptrs = q_ptr + token * stride_q_tok + heads[:, None] * stride_q_head
    q = tl.load(
        q_ptrs + offs_d[None, :] * stride_q_dim, mask=g_mask[:, None] & d_mask[None, :], other=0.0
    ).to(DOT_DTYPE)

    # Online softmax state per query head, in fp32 whatever the input dtype. The running max
    # starts at a large finite negative (not -inf) so that exp(m_old - m_new) is never NaN.
    m_i = tl.full([GROUP_PAD], -1.0e30, dtype=tl.float32)
    l_i = tl.zeros([GROUP_PAD], dtype=tl.float32)
    acc = tl.zeros([GROUP_PAD, BLOCK_D], dtype=tl.float32)

    page_list_ptr = page_table_ptr + row * stride_pt_row + kv_head * stride_pt_head
    for block_start in range(split_start, split_end, BLOCK_N):
        keys = block_start + offs_n
        key_mask = keys < split_end
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
        scores = tl.dot(q, tl.trans(k), input_precision="ieee") * sm_scale  # [GROUP_PAD, BLOCK_N]
        scores = tl.where(key_mask[None, :], scores, -1.0e30)

        m_new = tl.maximum(m_i, tl.max(scores, axis=1))
        alpha = tl.exp(m_i - m_new)  # rescales what was accumulated under the old max
        p = tl.where(key_mask[None, :], tl.exp(scores - m_new[:, None]), 0.0)
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

    if NUM_SPLITS == 1:
        # l_i >= 1 as soon as one key was seen (the max key adds exp(0)); it is 0 only for an
        # empty key range, whose acc is 0 too: the output is then 0 rather than NaN.
        result = acc / tl.maximum(l_i, 1.0)[:, None]
        o_ptrs = out_ptr + token * stride_o_tok + heads[:, None] * stride_o_head
        tl.store(
            o_ptrs + offs_d[None, :] * stride_o_dim,
            result.to(out_ptr.dtype.element_ty),
            mask=g_mask[:, None] & d_mask[None, :],
        )
    else:
        part = (batch_idx * num_heads + heads) * NUM_SPLITS + split  # [GROUP_PAD]
        tl.store(part_m_ptr + part, m_i, mask=g_mask)
        tl.store(part_l_ptr + part, l_i, mask=g_mask)
        tl.store(
            part_acc_ptr + part[:, None] * head_dim + offs_d[None, :],
            acc,
            mask=g_mask[:, None] & d_mask[None, :],
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


# --------------------------------------------------------------------------------------------
# Host side: argument checks, the split heuristic, the launch.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AttentionShape:
    """What the checks derive from the arguments, for the launch."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    group: int  # query heads per KV head
    block_d: int  # next power of two of head_dim
    quantized: bool  # int8 caches with per-(slot, head) scales
    len_strides: tuple[int, int]  # seq_lens (row, head); head stride 0 when shared by all heads
    table_strides: tuple[int, int, int]  # page_table (row, head, page); head 0 when shared


def _require(ok: bool, name: str, message: str) -> None:
    if not ok:
        raise ValueError(f"{name}: {message}")


def check_attention_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    rows: torch.Tensor,
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    page_size: int,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    per_head_tables: bool,
) -> AttentionShape:
    """Validate the arguments of both attention kernels; raise ``ValueError`` naming the culprit.

    A bad shape or dtype would otherwise surface as a wrong answer or a crash inside a kernel.
    ``per_head_tables`` allows ``page_table [R, Hkv, P]`` with ``seq_lens [R, Hkv]``.
    """
    _require(q.dim() == 3, "q", f"expected [T, num_heads, head_dim], got {tuple(q.shape)}")
    _require(q.dtype in ATTENTION_DTYPES, "q", f"dtype {q.dtype} not in {ATTENTION_DTYPES}")
    _require(out.shape == q.shape, "out", f"shape {tuple(out.shape)} != q {tuple(q.shape)}")
    _require(out.dtype in ATTENTION_DTYPES, "out", f"dtype {out.dtype} not in {ATTENTION_DTYPES}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    _require(head_dim <= MAX_HEAD_DIM, "q", f"head_dim {head_dim} > {MAX_HEAD_DIM}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        _require(cache.dim() == 3, name, f"expected [num_slots, Hkv, D], got {tuple(cache.shape)}")
        _require(
            cache.shape[1:] == k_cache.shape[1:] and cache.shape[2] == head_dim,
            name,
            f"shape {tuple(cache.shape)} does not match q's head_dim {head_dim} / the other cache",
        )
    num_kv_heads = k_cache.shape[1]
    _require(
        num_heads % num_kv_heads == 0,
        "q",
        f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}",
    )

    quantized = k_scale is not None or v_scale is not None
    if quantized:
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            _require(cache.dtype == torch.int8, name, f"scales given but dtype is {cache.dtype}")
        for name, scales in (("k_scale", k_scale), ("v_scale", v_scale)):
            _require(scales is not None, name, "k_scale and v_scale come together")
            assert scales is not None
            _require(
                scales.dtype == torch.float32 and scales.shape == k_cache.shape[:2],
                name,
                f"expected float32 {tuple(k_cache.shape[:2])}, got {scales.dtype} "
                f"{tuple(scales.shape)}",
            )
    else:
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            _require(
                cache.dtype == q.dtype,
                name,
                f"dtype {cache.dtype} != q's {q.dtype} (int8 caches need k_scale and v_scale)",
            )

    for name, index in (
        ("rows", rows),
        ("query_start_loc", query_start_loc),
        ("seq_lens", seq_lens),
        ("page_table", page_table),
    ):
        _require(
            index.dtype in (torch.int32, torch.int64), name, f"integer dtype, got {index.dtype}"
        )
        _require(index.device == q.device, name, f"on {index.device}, q on {q.device}")
    _require(rows.dim() == 1, "rows", f"expected [num_rows], got {tuple(rows.shape)}")
    _require(page_size >= 1, "page_size", f"must be >= 1, got {page_size}")

    num_rows = query_start_loc.shape[0] - 1
    if page_table.dim() == 2:
        table_strides = (page_table.stride(0), 0, page_table.stride(1))
    else:
        _require(
            per_head_tables and page_table.dim() == 3 and page_table.shape[1] == num_kv_heads,
            "page_table",
            f"expected [R, max_pages]{' or [R, Hkv, max_pages]' if per_head_tables else ''}, "
            f"got {tuple(page_table.shape)}",
        )
        table_strides = (page_table.stride(0), page_table.stride(1), page_table.stride(2))
    if seq_lens.dim() == 1:
        len_strides = (seq_lens.stride(0), 0)
    else:
        _require(
            per_head_tables and seq_lens.dim() == 2 and seq_lens.shape[1] == num_kv_heads,
            "seq_lens",
            f"expected [R]{' or [R, Hkv]' if per_head_tables else ''}, got {tuple(seq_lens.shape)}",
        )
        len_strides = (seq_lens.stride(0), seq_lens.stride(1))
    _require(
        page_table.shape[0] == num_rows and seq_lens.shape[0] == num_rows,
        "page_table",
        f"page_table and seq_lens must have {num_rows} rows (query_start_loc has R + 1 entries)",
    )
    return AttentionShape(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        group=num_heads // num_kv_heads,
        block_d=triton.next_power_of_2(head_dim),
        quantized=quantized,
        len_strides=len_strides,
        table_strides=table_strides,
    )


def scale_args(cache: torch.Tensor, scales: torch.Tensor | None) -> tuple[torch.Tensor, int, int]:
    """``(pointer, slot stride, head stride)`` of a cache's scales.

    Without scales the cache itself stands in as a never-read pointer (Triton needs a tensor).
    """
    if scales is None:
        return cache, 0, 0
    return scales, scales.stride(0), scales.stride(1)


def dot_operand_dtype(dtype: torch.dtype) -> tl.dtype:
    """The dtype ``tl.dot`` multiplies in for inputs of ``dtype`` (accumulation is always fp32).

    The input's own dtype (16-bit tensor cores on a GPU), except bfloat16 under the interpreter:
    it keeps bfloat16 as raw uint16 bits and its ``tl.dot`` multiplies those bit patterns
    (triton-lang/triton#11584), so there the operands are widened to float32.
    """
    if dtype == torch.bfloat16 and triton.knobs.runtime.interpret:
        return tl.float32
    return TRITON_DTYPES[dtype]


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
    merged by a second kernel (default: ``default_num_splits``).
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
        per_head_tables=True,
    )
    num_rows = rows.shape[0]
    if num_rows == 0:
        return
    if num_splits is None:
        # The page table's width bounds every row's kv_len without reading seq_lens (no sync).
        num_splits = default_num_splits(
            num_rows * shape.num_kv_heads,
            page_table.shape[-1] * page_size,
            num_multiprocessors(q.device),
        )
    _require(num_splits >= 1, "num_splits", f"must be >= 1, got {num_splits}")

    # Scratch for the partial softmax of each (row, query head, split); unused with one split.
    scratch_shape = (num_rows, shape.num_heads, num_splits) if num_splits > 1 else (1, 1, 1)
    part_m = torch.empty(scratch_shape, dtype=torch.float32, device=q.device)
    part_l = torch.empty(scratch_shape, dtype=torch.float32, device=q.device)
    part_acc = torch.empty((*scratch_shape, shape.head_dim), dtype=torch.float32, device=q.device)

    k_scale_arg, stride_ks_slot, stride_ks_head = scale_args(k_cache, k_scale)
    v_scale_arg, stride_vs_slot, stride_vs_head = scale_args(v_cache, v_scale)
    # tl.dot needs every tile side >= 16 on GPUs: pad the group of query heads to 16 rows.
    group_pad = max(16, triton.next_power_of_2(shape.group))

    grid = (num_rows, shape.num_kv_heads, num_splits)
    _decode_split_kernel[grid](
        q,
        k_cache,
        v_cache,
        k_scale_arg,
        v_scale_arg,
        out,
        part_m,
        part_l,
        part_acc,
        rows,
        query_start_loc,
        seq_lens,
        page_table,
        scale,
        page_size,
        shape.group,
        shape.num_heads,
        shape.head_dim,
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        stride_ks_slot,
        stride_ks_head,
        stride_vs_slot,
        stride_vs_head,
        *out.stride(),
        *shape.len_strides,
        *shape.table_strides,
        NUM_SPLITS=num_splits,
        GROUP_PAD=group_pad,
        BLOCK_N=DECODE_BLOCK_N,
        BLOCK_D=shape.block_d,
        QUANTIZED=shape.quantized,
        DOT_DTYPE=dot_operand_dtype(q.dtype),
    )
    if num_splits > 1:
        _decode_merge_kernel[(num_rows, shape.num_heads)](
            out,
            part_m,
            part_l,
            part_acc,
            rows,
            query_start_loc,
            shape.num_heads,
            shape.head_dim,
            *out.stride(),
            NUM_SPLITS=num_splits,
            BLOCK_S=triton.next_power_of_2(num_splits),
            BLOCK_D=shape.block_d,
        )
