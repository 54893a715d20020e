"""Qwen3 (dense), written from scratch and read top to bottom.

    token ids [T]
      -> embed_tokens                                   [T, hidden]
      -> N x DecoderLayer:
           h = h + Attention(RMSNorm(h))                 q/k RMS-normed per head, then rotary
           h = h + GatedMLP(RMSNorm(h))                  SwiGLU
      -> RMSNorm, keep only the rows that are sampled   [B, hidden]
      -> lm_head                                        [B, vocab]

There is no batch dimension and no padding: ``ForwardBatch`` describes which of the ``T`` tokens
belong to which sequence, and the attention backend reads earlier tokens from the paged KV pool.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.layers import Attention, GatedMLP, RMSNorm, RotaryEmbedding
from vibe_sgl_lite.models.weights import load_packed_weights


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding, *, qk_norm: bool) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            rotary,
            qkv_bias=config.attention_bias,
            qk_norm_eps=config.rms_norm_eps if qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = self.build_mlp(config)

    def build_mlp(self, config: ModelConfig) -> nn.Module:
        return GatedMLP(config.hidden_size, config.intermediate_size)

    def forward(
        self,
        h: torch.Tensor,
        batch: Any,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        backend: Any,
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), batch, kv_cache, backend)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3ForCausalLM(nn.Module):
    """Causal LM over the paged KV cache. ``forward`` returns logits only for sampled rows."""

    qk_norm = True
    layer_class: type[DecoderLayer] = DecoderLayer

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(
            self.layer_class(config, self.rotary, qk_norm=self.qk_norm)
            for _ in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, batch: Any, kv_pool: Any, backend: Any) -> torch.Tensor:
        """Run one flat batch; returns float32 logits ``[len(batch.sample_indices), vocab]``."""
        h = self.embed_tokens(batch.input_ids)
        for i, layer in enumerate(self.layers):
            h = layer(h, batch, kv_pool.layer(i), backend)
        h = self.norm(h[batch.sample_indices])
        return self.lm_head(h).float()

    def load_weights(self, weights: Any) -> None:
        """Copy checkpoint tensors ``(hf_name, tensor)`` into our (partly merged) parameters."""
        load_packed_weights(self, weights, prefix_map={"model.": ""})
