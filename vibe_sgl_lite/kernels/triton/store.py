"""Writing a step's new K/V into the paged cache, optionally quantised to int8.

Every token ``t`` of the step owns one cache slot, ``slot_mapping[t]`` (``page * page_size +
offset``, computed by the batch). Storing is a scatter of ``[Hkv, D]`` rows; one program per
token moves its K and V rows.

With int8 caches each ``(slot, head)`` row keeps its own fp32 scale (symmetric, per token per
head), so one outlier token does not flatten the resolution of the others::

    scale  = max(max_d |x_d| / 127, MIN_SCALE)      (the floor keeps an all-zero row finite)
    stored = clamp(round(x / scale), -127, 127)      x ~= stored * scale, error <= scale / 2
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

MIN_SCALE = 1e-8
"""Floor of an int8 scale: an all-zero row stores zeros instead of dividing by zero."""


@triton.jit
def _store_rows(
    src_ptr,
    cache_ptr,
    scale_ptr,
    token,
    slot,
    num_kv_heads,
    head_dim,
    stride_src_tok,
    stride_src_head,
    stride_src_dim,
    stride_cache_slot,
    stride_cache_head,
    stride_cache_dim,
    stride_scale_slot,
    stride_scale_head,
    QUANTIZED: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Copy the ``[Hkv, D]`` rows of one token (K or V) to its cache slot."""
    offs_h = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_h[:, None] < num_kv_heads) & (offs_d[None, :] < head_dim)
    x = tl.load(
        src_ptr
        + token * stride_src_tok
        + offs_h[:, None] * stride_src_head
        + offs_d[None, :] * stride_src_dim,
        mask=mask,
        other=0.0,
    )
    dst = cache_ptr + slot * stride_cache_slot + offs_h[:, None] * stride_cache_head
    dst += offs_d[None, :] * stride_cache_dim
    if QUANTIZED:
        x = x.to(tl.float32)
        scale = tl.maximum(tl.max(tl.abs(x), axis=1) / 127.0, MIN_SCALE)  # [BLOCK_H]
        scaled = x / scale[:, None]
        # Round half away from zero, then clamp (|scaled| <= 127 up to float error already).
        rounded = tl.where(scaled >= 0, tl.floor(scaled + 0.5), tl.ceil(scaled - 0.5))
        quantised = tl.minimum(tl.maximum(rounded, -127.0), 127.0)
        tl.store(dst, quantised.to(tl.int8), mask=mask)
        scale_ptrs = scale_ptr + slot * stride_scale_slot + offs_h * stride_scale_head
        tl.store(scale_ptrs, scale, mask=offs_h < num_kv_heads)
    else:
        tl.store(dst, x.to(cache_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    k_scale_ptr,
    v_scale_ptr,
    slot_mapping_ptr,
    num_kv_heads,
    head_dim,
    stride_k_tok,
    stride_k_head,
    stride_k_dim,
    stride_v_tok,
    stride_v_head,
    stride_v_dim,
    stride_kc_slot,
    stride_kc_head,
    stride_kc_dim,
    stride_vc_slot,
    stride_vc_head,
    stride_vc_dim,
    stride_ks_slot,
    stride_ks_head,
    stride_vs_slot,
    stride_vs_head,
    QUANTIZED: tl.constexpr,
    MIN_SCALE: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """Grid ``(T,)``: token ``t`` writes its K and V rows at ``slot_mapping[t]``."""
    token = tl.program_id(0)
    slot = tl.load(slot_mapping_ptr + token).to(tl.int64)
    _store_rows(
        k_ptr,
        k_cache_ptr,
        k_scale_ptr,
        token,
        slot,
        num_kv_heads,
        head_dim,
        stride_k_tok,
        stride_k_head,
        stride_k_dim,
        stride_kc_slot,
        stride_kc_head,
        stride_kc_dim,
        stride_ks_slot,
        stride_ks_head,
        QUANTIZED,
        MIN_SCALE,
        BLOCK_H,
        BLOCK_D,
    )
    _store_rows(
        v_ptr,
        v_cache_ptr,
        v_scale_ptr,
        token,
        slot,
        num_kv_heads,
        head_dim,
        stride_v_tok,
        stride_v_head,
        stride_v_dim,
        stride_vc_slot,
        stride_vc_head,
        stride_vc_dim,
        stride_vs_slot,
        stride_vs_head,
        QUANTIZED,
        MIN_SCALE,
        BLOCK_H,
        BLOCK_D,
    )


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    k_scale: torch.Tensor | None = None,
    v_scale: torch.Tensor | None = None,
) -> None:
    """Write ``k, v [T, Hkv, D]`` into ``k_cache, v_cache [num_slots, Hkv, D]`` at ``slot_mapping [T]``.

    Unquantised caches take the values cast to their dtype. With ``k_scale, v_scale
    [num_slots, Hkv]`` (float32) the caches are int8: each ``(token, head)`` row is quantised
    symmetrically and its scale written at ``[slot, head]`` (see the module docstring).
    """
    for name, x in (("k", k), ("v", v)):
        if x.dim() != 3 or x.shape != k.shape:
            raise ValueError(f"{name}: expected [T, Hkv, D] like k, got {tuple(x.shape)}")
        if not x.dtype.is_floating_point:
            raise ValueError(f"{name}: floating dtype expected, got {x.dtype}")
    for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
        if cache.dim() != 3 or cache.shape[1:] != k.shape[1:]:
            raise ValueError(
                f"{name}: expected [num_slots, {k.shape[1]}, {k.shape[2]}], got {tuple(cache.shape)}"
            )
    if slot_mapping.shape != k.shape[:1] or slot_mapping.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"slot_mapping: expected integer [{k.shape[0]}], got {slot_mapping.dtype} "
            f"{tuple(slot_mapping.shape)}"
        )
    quantized = k_scale is not None or v_scale is not None
    if quantized:
        for name, scales, cache in (("k_scale", k_scale, k_cache), ("v_scale", v_scale, v_cache)):
            if scales is None:
                raise ValueError(f"{name}: k_scale and v_scale come together")
            if scales.dtype != torch.float32 or scales.shape != cache.shape[:2]:
                raise ValueError(
                    f"{name}: expected float32 {tuple(cache.shape[:2])}, got {scales.dtype} "
                    f"{tuple(scales.shape)}"
                )
            if cache.dtype != torch.int8:
                raise ValueError(f"{name}: scales given but the cache dtype is {cache.dtype}")
    else:
        for name, cache in (("k_cache", k_cache), ("v_cache", v_cache)):
            if not cache.dtype.is_floating_point:
                raise ValueError(f"{name}: dtype {cache.dtype} needs k_scale and v_scale")
    num_tokens, num_kv_heads, head_dim = k.shape
    if num_tokens == 0:
        return

    # Without scales the caches stand in as never-dereferenced pointers.
    k_scale_arg = k_scale if k_scale is not None else k_cache
    v_scale_arg = v_scale if v_scale is not None else v_cache
    k_scale_strides = k_scale.stride() if k_scale is not None else (0, 0)
    v_scale_strides = v_scale.stride() if v_scale is not None else (0, 0)
    _store_kv_kernel[(num_tokens,)](
        k,
        v,
        k_cache,
        v_cache,
        k_scale_arg,
        v_scale_arg,
        slot_mapping,
        num_kv_heads,
        head_dim,
        *k.stride(),
        *v.stride(),
        *k_cache.stride(),
        *v_cache.stride(),
        *k_scale_strides,
        *v_scale_strides,
        QUANTIZED=quantized,
        MIN_SCALE=MIN_SCALE,
        BLOCK_H=triton.next_power_of_2(num_kv_heads),
        BLOCK_D=triton.next_power_of_2(head_dim),
    )
