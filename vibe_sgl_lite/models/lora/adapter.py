"""Reading a PEFT LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``).

PEFT stores, for each adapted projection ``W [out, in]`` of the base model, two matrices::

    base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight    A [r, in]
    base_model.model.model.layers.3.self_attn.q_proj.lora_B.weight    B [out, r]

and the layer computes ``y = W x + scaling * B (A x)`` with ``scaling = lora_alpha / r``
(``lora_alpha / sqrt(r)`` under ``use_rslora``). Our decoder packs ``q/k/v`` into ``qkv_proj``
and ``gate/up`` into ``gate_up_proj`` (``models/weights.PACKED``), so an adapted ``k_proj`` is
*slice* 1 of ``qkv_proj``: the adapter is stored per (our module, slice), and ``scaling`` is
folded into ``B`` here, once.

Everything is checked against the base model's config before any worker sees the adapter: the
rank against ``max_lora_rank``, the targets against the projections we can adapt, each shape
against the base's (an adapter trained for another base is refused by name).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.weights import PACKED

SUPPORTED_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
ATTENTION_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")
_KEY = re.compile(r"^(?:base_model\.model\.)?(?:model\.)?layers\.(\d+)\.(\w+)\.(\w+)\.lora_([AB])")

ModuleSlice = tuple[str, int]
"""``("layers.3.self_attn.qkv_proj", 1)``: one of our modules and the slice of its output."""


@dataclass
class LoRAAdapter:
    """One adapter's weights as our modules see them.

    ``weights[(module, slice)] = (A [r, in], B [out, r])`` in float32, ``B`` already multiplied
    by ``scaling``. ``rank`` is ``r``; ``path`` the folder it came from.
    """

    path: str
    rank: int
    scaling: float
    weights: dict[ModuleSlice, tuple[torch.Tensor, torch.Tensor]]


def _config(folder: Path, max_rank: int) -> tuple[int, float, list[str] | None]:
    """``(r, scaling, target_modules or None for a pattern)`` of ``adapter_config.json``."""
    file = folder / "adapter_config.json"
    if not folder.is_dir():
        raise ValueError(f"lora_path {str(folder)!r} is not a folder")
    if not file.is_file():
        raise ValueError(f"lora_path {str(folder)!r} has no adapter_config.json")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"adapter_config.json in {str(folder)!r} is not valid JSON: {exc}"
        ) from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"adapter peft_type must be 'LORA', got {cfg.get('peft_type')!r}")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha", cfg.get("r"))
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"adapter r must be an integer >= 1, got {r!r}")
    if r > max_rank:
        raise ValueError(f"adapter r={r} is above max_lora_rank={max_rank}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise ValueError(f"adapter lora_alpha must be a number, got {alpha!r}")
    for field in ("rank_pattern", "alpha_pattern"):
        if cfg.get(field):
            raise ValueError(f"adapter {field} (per-module ranks) is not supported")
    for field in ("use_dora", "fan_in_fan_out"):
        if cfg.get(field):
            raise ValueError(f"adapter {field}=true is not supported")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"adapter bias must be 'none', got {cfg.get('bias')!r}")
    if cfg.get("modules_to_save"):
        raise ValueError(
            f"adapter modules_to_save {cfg['modules_to_save']!r} is not supported (LoRA only)"
        )
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    targets = cfg.get("target_modules")
    if isinstance(targets, list):
        unknown = [t for t in targets if t.rsplit(".", 1)[-1] not in SUPPORTED_TARGETS]
        if unknown:
            raise ValueError(
                f"adapter target module {unknown[0]!r} is not supported; "
                f"allowed: {', '.join(SUPPORTED_TARGETS)}"
            )
        return r, scaling, targets
    return r, scaling, None


def _expected_shape(proj: str, layer: int, mc: ModelConfig) -> tuple[int, int]:
    """``(out, in)`` of checkpoint projection ``proj`` in layer ``layer`` of the base model."""
    q, kv = mc.num_attention_heads * mc.head_dim, mc.num_key_value_heads * mc.head_dim
    shapes = {
        "q_proj": (q, mc.hidden_size),
        "k_proj": (kv, mc.hidden_size),
        "v_proj": (kv, mc.hidden_size),
        "o_proj": (mc.hidden_size, q),
        "gate_proj": (mc.intermediate_size, mc.hidden_size),
        "up_proj": (mc.intermediate_size, mc.hidden_size),
        "down_proj": (mc.hidden_size, mc.intermediate_size),
    }
    if proj not in ATTENTION_TARGETS and mc.is_sparse_layer(layer):
        raise ValueError(
            f"adapter target module {proj!r} of layer {layer} is a mixture-of-experts layer, "
            "which LoRA does not support here"
        )
    return shapes[proj]


def _our_module(layer: int, block: str, proj: str) -> ModuleSlice:
    merged, index = PACKED.get(proj, (proj, 0))
    return f"layers.{layer}.{block}.{merged}", index


def read_adapter(path: str | Path, model_config: ModelConfig, max_rank: int) -> LoRAAdapter:
    """Read and check the PEFT folder ``path`` for the base model ``model_config``.

    Raises ``ValueError`` naming the problem: no folder or config, a rank above ``max_rank``,
    an unsupported target, a shape that does not fit the base (another base model)."""
    folder = Path(path)
    rank, scaling, _ = _config(folder, max_rank)
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        raise ValueError(
            f"lora_path {str(folder)!r} has no adapter_model.safetensors "
            "(only safetensors adapters are read, never pickled .bin files)"
        )
    pairs: dict[tuple[int, str, str], dict[str, torch.Tensor]] = {}
    with safe_open(str(file), framework="pt") as f:
        for key in f.keys():
            match = _KEY.match(key)
            if match is None:
                raise ValueError(
                    f"adapter tensor {key!r} is not a LoRA weight of a supported target module "
                    f"({', '.join(SUPPORTED_TARGETS)})"
                )
            layer, block, proj, which = match.groups()
            if proj not in SUPPORTED_TARGETS:
                raise ValueError(
                    f"adapter target module {proj!r} is not supported; "
                    f"allowed: {', '.join(SUPPORTED_TARGETS)}"
                )
            pairs.setdefault((int(layer), block, proj), {})[which] = f.get_tensor(key).float()
    if not pairs:
        raise ValueError(f"adapter in {str(folder)!r} holds no LoRA weights")
    weights: dict[ModuleSlice, tuple[torch.Tensor, torch.Tensor]] = {}
    for (layer, block, proj), ab in sorted(pairs.items()):
        name = f"layers.{layer}.{block}.{proj}"
        if set(ab) != {"A", "B"}:
            raise ValueError(f"adapter module {name!r} lacks lora_A or lora_B")
        if layer >= model_config.num_hidden_layers:
            raise ValueError(
                f"adapter module {name!r}: the base model has only "
                f"{model_config.num_hidden_layers} layers (an adapter for another base?)"
            )
        out, inp = _expected_shape(proj, layer, model_config)
        a, b = ab["A"], ab["B"]
        if tuple(a.shape) != (rank, inp) or tuple(b.shape) != (out, rank):
            raise ValueError(
                f"adapter module {name!r} has lora_A {tuple(a.shape)} and lora_B "
                f"{tuple(b.shape)}, the base model needs ({rank}, {inp}) and ({out}, {rank}) "
                "(an adapter for another base model?)"
            )
        weights[_our_module(layer, block, proj)] = (a.contiguous(), (b * scaling).contiguous())
    return LoRAAdapter(str(folder), rank, scaling, weights)
