"""Which linear layers quantisation replaces, and by which kind of layer (``quantize_model``).

``quantization`` (an ``EngineConfig`` field) is one of ``MODES``::

    "int8"              Int8Linear       (models/w8a8.py)        int8 weights, int8 activation rows
    "int8_weight_only"  QuantizedLinear  (models/quantization.py) int8 weights, float activations
    "int4"              QuantizedLinear  (models/quantization.py) int4 groups, float activations

All three start from the same weight numbers (``QuantizedWeight``). A checkpoint that arrives
already quantised (a GGUF file's Q8_0/Q4_0/Q4_1 blocks) is multiplied as stored where the mode
keeps that format (``GGUFLinear``, ``models/gguf_linear.py``), and requantised otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from vibe_sgl_lite.kernels import gguf_gemm, int8_gemm
from vibe_sgl_lite.models.gguf_linear import GGUFLinear, kept_format
from vibe_sgl_lite.models.layers import Attention, GatedMLP, Linear, MergedLinear
from vibe_sgl_lite.models.quantization import (
    DEFAULT_INT4_GROUP_SIZE,
    INT4_GROUP_SIZES,
    MODES,
    QuantizedLinear,
    QuantizedWeight,
    Slot,
    quantize_weight,
    weight_format,
)
from vibe_sgl_lite.models.w8a8 import Int8Linear


def quantization_targets(model: nn.Module, lm_head: bool = True) -> dict[str, nn.Linear]:
    """``{module path: linear}`` of the layers ``quantize_model`` replaces.

    Every attention (``qkv_proj``, ``o_proj``) and dense SwiGLU (``gate_up_proj``,
    ``down_proj``) projection, and the LM head if ``lm_head``: the matrices a decode step reads.
    The embedding is a lookup (one row per token, never the whole matrix), so it stays float; so
    do norms, a mixture-of-experts router (tiny, and its top-k choice is sensitive) and the
    stacked experts (not ``nn.Linear``).

    A layer cut for tensor parallelism is a subclass with its own communicating ``forward``,
    which a ``QuantizedLinear`` would silently drop: it is refused with a ``ValueError``."""
    targets: dict[str, nn.Linear] = {}
    for path, module in model.named_modules():
        if isinstance(module, Attention):
            names = ("qkv_proj", "o_proj")
        elif isinstance(module, GatedMLP):
            names = ("gate_up_proj", "down_proj")
        else:
            continue
        for name in names:
            targets[f"{path}.{name}"] = getattr(module, name)
    head = getattr(model, "lm_head", None)
    if lm_head and isinstance(head, nn.Linear):
        targets["lm_head"] = head
    for path, linear in targets.items():
        if type(linear) not in (nn.Linear, Linear, MergedLinear):
            raise ValueError(
                f"quantization cannot replace {path} ({type(linear).__name__}): layers sharded "
                "for tensor parallelism are not supported (use tp_size=1)"
            )
    return targets


def shard_rows(linear: nn.Linear) -> list[tuple[int, int]]:
    """``(first row, rows)`` of each checkpoint tensor in ``linear``'s weight (one if unmerged)."""
    if isinstance(linear, MergedLinear):
        return [(linear.shard_offset(i), n) for i, n in enumerate(linear.shard_sizes)]
    return [(0, linear.out_features)]


@torch.no_grad()
def quantize_model(
    model: nn.Module,
    mode: str,
    *,
    group_size: int = DEFAULT_INT4_GROUP_SIZE,
    lm_head: str | None = "int8",
    prequantized: Mapping[Slot, QuantizedWeight] | None = None,
) -> nn.Module:
    """Replace ``model``'s target linears (``quantization_targets``) by ``QuantizedLinear``, in
    place, after its float weights are loaded; returns ``model``.

    ``lm_head`` is the LM head's own mode (``None``: keep it float). It defaults to int8 (W8A8)
    under every mode, as llama.cpp keeps its output matrix above 4 bits: it is the largest matrix
    a decode step reads in small models, int8 costs it nothing measurable, but int4 made SmolLM2's
    perplexity 6% worse (the other layers in int4: +0.04%). A tied LM head gets its own quantised
    copy of the embedding, which stays float for the lookup.

    ``prequantized`` holds checkpoint tensors that arrived already quantised (a GGUF file's
    blocks), by ``(module path, shard index)``; the float rows of that shard were never loaded.
    On the CPU, a layer whose every part is a block format its mode keeps (``kept_format``)
    becomes a ``GGUFLinear`` on those blocks as stored; otherwise each part is used as it is
    if it already has the mode's layout, or dequantised and requantised. A merged layer may mix
    parts, since every row is quantised on its own."""
    for name, value in (("quantization", mode), ("lm_head", lm_head)):
        if value is not None and value not in MODES:
            raise ValueError(f"{name} must be one of {', '.join(MODES)}, got {value!r}")
    if group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"group_size must be one of {INT4_GROUP_SIZES}, got {group_size}")
    on_cpu = next(model.parameters()).device.type == "cpu"
    given = prequantized or {}
    kernels = [(int8_gemm, "int8" in (mode, lm_head), "W8A8 int8"), (gguf_gemm, given, "GGUF")]
    for kernel, needed, what in kernels:
        if not (needed and on_cpu):
            continue
        try:
            kernel.best_isa()  # build the kernel now, at ModelRunner(...), not in the first step
        except RuntimeError as e:
            raise ValueError(
                f"quantization={mode!r} ({what}) could not build its CPU kernel ({e}); install "
                "a C++ compiler and ninja, or pass quantization='int8_weight_only'"
            ) from e
    modules = dict(model.named_modules())
    for path, linear in quantization_targets(model, lm_head=lm_head is not None).items():
        layer_mode = lm_head if path == "lm_head" and lm_head is not None else mode
        parts = [given.get((path, shard)) for shard in range(len(shard_rows(linear)))]
        quantized: nn.Module
        if on_cpu and kept_format(parts, layer_mode) is not None:
            stored = QuantizedWeight.cat([p for p in parts if p is not None])
            quantized = GGUFLinear(stored, linear.bias, linear.in_features)
        else:
            quantized = _requantized(linear, parts, layer_mode, group_size)
        parent, _, attr = path.rpartition(".")
        setattr(modules[parent] if parent else model, attr, quantized)
    return model


def _requantized(
    linear: nn.Linear, given: list[QuantizedWeight | None], mode: str, group_size: int
) -> nn.Module:
    """``linear`` as a ``mode`` layer: each checkpoint part (``given``, by shard) used as it is if
    it already has the mode's layout, else quantised from its floats (the loaded rows, or the
    part dequantised: GGUF blocks the mode does not keep)."""
    parts = []
    for part, (start, rows) in zip(given, shard_rows(linear)):
        if part is None or part.mode != weight_format(mode):
            floats = linear.weight[start : start + rows] if part is None else part.dequantize()
            part = quantize_weight(floats[:, : linear.in_features], mode, group_size)
        parts.append(part.map_rows(lambda t: t.to(linear.weight.device)))
    numbers = QuantizedWeight.cat(parts)
    if mode == "int8":
        return Int8Linear(numbers.q, numbers.scale, linear.bias, linear.in_features)
    return QuantizedLinear(numbers, linear.bias, linear.in_features)
