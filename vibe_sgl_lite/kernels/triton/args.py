"""The attention kernels' host-side arguments: checked, then laid out as a launch takes them.

A bad shape or dtype would otherwise surface as a wrong answer or a crash inside a kernel, so
every argument is checked and a ``ValueError`` names the culprit. The arguments change at two
rates, and so do the checks:

* ``check_layer_args``: ``q``, ``out`` and one layer's caches. Every layer of a model has the
  same shapes and dtypes, so the backend checks them on the first layer of a step only.
* ``check_index_args``: the step's index tensors (rows, ``query_start_loc``, ``seq_lens``, the
  page table), the same for every layer: the backend checks them once, in ``prepare``.

The standalone kernel functions (``paged_decode_attention``, ``paged_extend_attention``) run
both on every call. A check builds its message only when it fails: on the hot path a check is
a comparison, nothing more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NoReturn

import torch
import triton
import triton.language as tl

from vibe_sgl_lite.kernels.triton.common import ATTENTION_DTYPES, MAX_HEAD_DIM, dot_operand_dtype

INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class HeadShape:
    """What ``check_layer_args`` derives from ``q`` and the caches, the same for every layer."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    group: int  # query heads per KV head
    block_d: int  # next power of two of head_dim
    quantized: bool  # int8 caches with per-(slot, head) scales
    dot_dtype: tl.dtype  # tl.dot's operand dtype, see dot_operand_dtype


@dataclass(frozen=True)
class PagedIndex:
    """The step's checked index tensors, with the strides the kernels read them by.

    ``launch_args`` is their part of a kernel's arguments: ``query_start_loc, seq_lens,
    page_table, page_size``, then the ``seq_lens (row, head)`` and ``page_table (row, head,
    page)`` strides, a head stride being 0 for the ``[R]``/``[R, P]`` layouts all heads share.
    """

    query_start_loc: torch.Tensor
    page_table: torch.Tensor
    page_size: int
    launch_args: tuple[torch.Tensor | int, ...]


def _fail(name: str, message: str) -> NoReturn:
    raise ValueError(f"{name}: {message}")


def check_layer_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
) -> HeadShape:
    """Check ``q, out [T, Hq, D]`` and ``k_cache, v_cache [num_slots, Hkv, D]`` (+ int8 scales)."""
    if q.dim() != 3:
        _fail("q", f"expected [T, num_heads, head_dim], got {tuple(q.shape)}")
    if q.dtype not in ATTENTION_DTYPES:
        _fail("q", f"dtype {q.dtype} not in {ATTENTION_DTYPES}")
    if out.shape != q.shape:
        _fail("out", f"shape {tuple(out.shape)} != q {tuple(q.shape)}")
    if out.dtype not in ATTENTION_DTYPES:
        _fail("out", f"dtype {out.dtype} not in {ATTENTION_DTYPES}")
    num_heads, head_dim = q.shape[1], q.shape[2]
    if head_dim > MAX_HEAD_DIM:
        _fail("q", f"head_dim {head_dim} > {MAX_HEAD_DIM}")
    caches = (("k_cache", k_cache), ("v_cache", v_cache))
    for name, cache in caches:
        if cache.dim() != 3:
            _fail(name, f"expected [num_slots, Hkv, D], got {tuple(cache.shape)}")
        if cache.shape[1:] != k_cache.shape[1:] or cache.shape[2] != head_dim:
            _fail(
                name,
                f"shape {tuple(cache.shape)} does not match q's head_dim {head_dim} / the other "
                "cache",
            )
    num_kv_heads = k_cache.shape[1]
    if num_heads % num_kv_heads != 0:
        _fail("q", f"num_heads {num_heads} is not a multiple of num_kv_heads {num_kv_heads}")

    quantized = k_scale is not None or v_scale is not None
    if quantized:
        for name, cache in caches:
            if cache.dtype != torch.int8:
                _fail(name, f"scales given but dtype is {cache.dtype}")
        for name, scales in (("k_scale", k_scale), ("v_scale", v_scale)):
            if scales is None:
                _fail(name, "k_scale and v_scale come together")
            if scales.dtype != torch.float32 or scales.shape != k_cache.shape[:2]:
                _fail(
                    name,
                    f"expected float32 {tuple(k_cache.shape[:2])}, got {scales.dtype} "
                    f"{tuple(scales.shape)}",
                )
    else:
        for name, cache in caches:
            if cache.dtype != q.dtype:
                _fail(
                    name,
                    f"dtype {cache.dtype} != q's {q.dtype} (int8 caches need k_scale and v_scale)",
                )
    return HeadShape(
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        group=num_heads // num_kv_heads,
        block_d=triton.next_power_of_2(head_dim),
        quantized=quantized,
        dot_dtype=dot_operand_dtype(q.dtype),
    )


def check_index_args(
    rows: Sequence[torch.Tensor],
    query_start_loc: torch.Tensor,
    seq_lens: torch.Tensor,
    page_table: torch.Tensor,
    page_size: int,
    device: torch.device,
    per_head_tables: int | None = None,
) -> PagedIndex:
    """Check the step's index tensors: integer, on ``device`` (q's), of matching row counts.

    ``rows``: each kernel's ``[num_rows]`` row list; ``query_start_loc [R + 1]``; ``seq_lens
    [R]``; ``page_table [R, P]``. ``per_head_tables = Hkv`` also allows one page list per KV
    head, ``page_table [R, Hkv, P]`` with ``seq_lens [R, Hkv]`` (decode only).
    """
    named = [("rows", r) for r in rows]
    named += [("query_start_loc", query_start_loc), ("seq_lens", seq_lens)]
    for name, index in (*named, ("page_table", page_table)):
        if index.dtype not in INDEX_DTYPES:
            _fail(name, f"integer dtype, got {index.dtype}")
        if index.device != device:
            _fail(name, f"on {index.device}, q on {device}")
    for r in rows:
        if r.dim() != 1:
            _fail("rows", f"expected [num_rows], got {tuple(r.shape)}")
    if page_size < 1:
        _fail("page_size", f"must be >= 1, got {page_size}")

    per_head = per_head_tables is not None
    if page_table.dim() == 2:
        table_strides = (page_table.stride(0), 0, page_table.stride(1))
    elif per_head and page_table.dim() == 3 and page_table.shape[1] == per_head_tables:
        table_strides = (page_table.stride(0), page_table.stride(1), page_table.stride(2))
    else:
        _fail(
            "page_table",
            f"expected [R, max_pages]{' or [R, Hkv, max_pages]' if per_head else ''}, "
            f"got {tuple(page_table.shape)}",
        )
    if seq_lens.dim() == 1:
        len_strides = (seq_lens.stride(0), 0)
    elif per_head and seq_lens.dim() == 2 and seq_lens.shape[1] == per_head_tables:
        len_strides = (seq_lens.stride(0), seq_lens.stride(1))
    else:
        _fail(
            "seq_lens",
            f"expected [R]{' or [R, Hkv]' if per_head else ''}, got {tuple(seq_lens.shape)}",
        )
    num_rows = query_start_loc.shape[0] - 1
    if page_table.shape[0] != num_rows or seq_lens.shape[0] != num_rows:
        _fail(
            "page_table",
            f"page_table and seq_lens must have {num_rows} rows (query_start_loc has R + 1 "
            "entries)",
        )
    return PagedIndex(
        query_start_loc=query_start_loc,
        page_table=page_table,
        page_size=page_size,
        launch_args=(
            *(query_start_loc, seq_lens, page_table, page_size),
            *len_strides,
            *table_strides,
        ),
    )


def layer_launch_args(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k_scale: torch.Tensor | None,
    v_scale: torch.Tensor | None,
    out: torch.Tensor,
) -> tuple[torch.Tensor | int, ...]:
    """One layer's part of a kernel's arguments: 6 tensors, then their 16 strides.

    ``q, k_cache, v_cache, k_scale, v_scale, out``, then the strides of ``q (token, head, dim)``,
    ``k_cache`` and ``v_cache (slot, head, dim)``, the scales ``(slot, head)`` and ``out``.
    Without scales the cache itself stands in as a never-read pointer (Triton needs a tensor).
    """
    k_scales = k_cache if k_scale is None else k_scale
    v_scales = v_cache if v_scale is None else v_scale
    k_scale_strides = (0, 0) if k_scale is None else k_scale.stride()
    v_scale_strides = (0, 0) if v_scale is None else v_scale.stride()
    return (
        *(q, k_cache, v_cache, k_scales, v_scales, out),
        *q.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *k_scale_strides,
        *v_scale_strides,
        *out.stride(),
    )
