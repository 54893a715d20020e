"""Qwen3-MoE: Qwen3's attention, with a mixture of experts as the feed-forward of most layers.

Layer ``i`` is sparse iff ``i not in mlp_only_layers and num_experts > 0 and
(i + 1) % decoder_sparse_step == 0`` (``ModelConfig.is_sparse_layer``, transformers' rule); the
other layers keep a dense SwiGLU of ``intermediate_size``. Experts are ``moe_intermediate_size``
wide; see ``moe.py`` for routing and the stacked expert weights.
"""

from __future__ import annotations

from torch import nn

from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.moe import SparseMoeBlock
from vibe_sgl_lite.models.qwen3 import Qwen3ForCausalLM


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    """Qwen3 mixture-of-experts causal LM (``Qwen/Qwen3-30B-A3B`` ...)."""

    def build_mlp(self, config: ModelConfig, layer_idx: int) -> nn.Module:
        if not config.is_sparse_layer(layer_idx):
            return super().build_mlp(config, layer_idx)
        return SparseMoeBlock(
            config.hidden_size,
            config.moe_intermediate_size,
            config.num_experts,
            config.num_experts_per_tok,
            config.norm_topk_prob,
        )
