"""A random-weight EAGLE head for a tiny target, saved as the head folders are."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file


def build_random_head(target_dir: Path, out_dir: Path, seed: int = 0) -> Path:
    cfg = json.loads((target_dir / "config.json").read_text())
    cfg["num_hidden_layers"] = 1
    h, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads, dim = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.2

    weights = {
        "fc.weight": rand(h, 2 * h),
        "fc.bias": rand(h),
        "layers.0.input_layernorm.weight": torch.ones(h),
        "layers.0.post_attention_layernorm.weight": torch.ones(h),
        "layers.0.self_attn.q_proj.weight": rand(heads * dim, h),
        "layers.0.self_attn.k_proj.weight": rand(kv_heads * dim, h),
        "layers.0.self_attn.v_proj.weight": rand(kv_heads * dim, h),
        "layers.0.self_attn.o_proj.weight": rand(h, heads * dim),
        "layers.0.self_attn.q_norm.weight": torch.ones(dim),
        "layers.0.self_attn.k_norm.weight": torch.ones(dim),
        "layers.0.mlp.gate_proj.weight": rand(inter, h),
        "layers.0.mlp.up_proj.weight": rand(inter, h),
        "layers.0.mlp.down_proj.weight": rand(h, inter),
        "norm.weight": torch.ones(h),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "config.json").write_text(json.dumps(cfg))
    save_file(weights, str(out_dir / "model.safetensors"))
    return out_dir
