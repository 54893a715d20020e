"""The decoder that Llama, Qwen2, Qwen3 and Qwen3-MoE share, written once and read top to bottom.

    token ids [T]
      -> embed_tokens                                   [T, hidden]
      -> N x DecoderLayer:
           h = h + Attention(RMSNorm(h))                 (q/k-norm, biases: per architecture)
           h = h + MLP(RMSNorm(h))                       SwiGLU, or a SparseMoeBlock
      -> RMSNorm, keep only the rows that are sampled   [B, hidden]
      -> lm_head                                        [B, vocab]

A pipeline stage (``distributed/pipeline_parallel.py``) holds only ``layer_range`` and, on the
first and last stages, the embedding or the final norm and LM head: it runs ``embed``,
``forward_layers`` and ``compute_logits``, the three parts of ``forward``, as its place allows.

There is no batch dimension and no padding: ``ForwardBatch`` describes which of the ``T`` tokens
belong to which sequence, and the attention backend reads earlier tokens from the paged KV pool.

An architecture of this family is a subclass that sets a few class attributes (``qk_norm``,
``qkv_bias``, ``o_bias``) and, if its feed-forward differs, overrides
``DecoderForCausalLM.build_mlp``; see ``docs/adding_a_model.md``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import nn

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.memory.kv_pool import KVPool, LayerKV
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.layers import Attention, GatedMLP, Linear, RMSNorm, RotaryEmbedding
from vibe_sgl_lite.models.weights import load_packed_weights


class DecoderLayer(nn.Module):
    """Pre-norm residual block: attention, then a feed-forward (dense or mixture of experts).

    ``qkv_bias``/``o_bias`` default to the config's ``attention_bias``; ``mlp`` is the
    feed-forward the model chose for this layer (``DecoderForCausalLM.build_mlp``).
    ``forward``: ``h: [T, hidden] -> [T, hidden]``.
    """

    def __init__(
        self,
        config: ModelConfig,
        rotary: RotaryEmbedding,
        *,
        qk_norm: bool,
        qkv_bias: bool | None = None,
        o_bias: bool | None = None,
        mlp: nn.Module,
    ) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(
            config.hidden_size,
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim,
            rotary,
            qkv_bias=config.attention_bias if qkv_bias is None else qkv_bias,
            o_bias=config.attention_bias if o_bias is None else o_bias,
            qk_norm_eps=config.rms_norm_eps if qk_norm else None,
        )
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = mlp

    def forward(
        self,
        h: torch.Tensor,
        batch: ForwardBatch,
        kv_cache: LayerKV,
        backend: AttentionBackend,
    ) -> torch.Tensor:
        h = h + self.self_attn(self.input_layernorm(h), batch, kv_cache, backend)
        return h + self.mlp(self.post_attention_layernorm(h))


class DecoderForCausalLM(nn.Module):
    """Causal LM over the paged KV cache. ``forward`` returns logits only for sampled rows.

    Subclasses choose the architecture's details with class attributes:

    * ``qk_norm``: RMSNorm each query and key head before rotary (Qwen3).
    * ``qkv_bias`` / ``o_bias``: ``None`` follows ``config.attention_bias`` (Llama, Qwen3);
      Qwen2 fixes them to ``True`` / ``False`` because its config has no such field.
    * ``build_mlp(config, layer_idx)``: the feed-forward of each layer (Qwen3-MoE mixes dense
      layers and expert layers).
    """

    qk_norm: ClassVar[bool] = False
    qkv_bias: ClassVar[bool | None] = None
    o_bias: ClassVar[bool | None] = None
    layer_class: type[DecoderLayer] = DecoderLayer

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.check_config(config)
        self.config = config
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.rotary = RotaryEmbedding(
            config.head_dim, config.max_position_embeddings, config.rope_theta, config.rope_scaling
        )
        self.layers = nn.ModuleList(
            self.build_layer(config, self.rotary, self.build_mlp(config, i))
            for i in range(config.num_hidden_layers)
        )
        self.layer_range = range(config.num_hidden_layers)
        """The layers this process runs (all but a pipeline stage's are placeholders)."""
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head: nn.Linear = Linear(config.hidden_size, config.vocab_size, bias=False)
        self.tie_weights()

    def tie_weights(self) -> None:
        """Share the embedding matrix with the LM head when the checkpoint ties them.

        Called again by the loader after ``to_empty``, which materialises a tied parameter once
        per module and so unties it.
        """
        if self.config.tie_word_embeddings and isinstance(self.lm_head, nn.Linear):
            self.lm_head.weight = self.embed_tokens.weight

    @classmethod
    def check_config(cls, config: ModelConfig) -> None:
        """Refuse, by field name, what this decoder would otherwise silently compute wrongly."""
        if config.hidden_act != "silu":
            raise ValueError(
                f"{cls.__name__}: hidden_act {config.hidden_act!r} is not supported (only 'silu')"
            )
        raw = config.raw
        if raw.get("use_sliding_window"):
            raise ValueError(
                f"{cls.__name__}: use_sliding_window=true is not supported; "
                "every layer here attends over the full context"
            )
        if "sliding_attention" in (raw.get("layer_types") or []):
            raise ValueError(
                f"{cls.__name__}: layer_types contains 'sliding_attention', which is not "
                "supported; every layer here attends over the full context"
            )

    @classmethod
    def build_layer(
        cls, config: ModelConfig, rotary: RotaryEmbedding, mlp: nn.Module
    ) -> DecoderLayer:
        """One layer of this architecture (its ``layer_class`` and attention flags) around
        ``mlp``; an EAGLE head builds its one layer here too (``speculative/eagle_head.py``)."""
        return cls.layer_class(
            config, rotary, qk_norm=cls.qk_norm, qkv_bias=cls.qkv_bias, o_bias=cls.o_bias, mlp=mlp
        )

    def build_mlp(self, config: ModelConfig, layer_idx: int) -> nn.Module:
        """The feed-forward of layer ``layer_idx``: a dense SwiGLU unless a subclass says so."""
        return GatedMLP(config.hidden_size, config.intermediate_size, bias=config.mlp_bias)

    @property
    def num_local_kv_heads(self) -> int:
        """KV heads this process holds (all of them, unless sharded for tensor parallelism)."""
        attn = self.layers[self.layer_range.start].self_attn
        assert isinstance(attn, Attention)
        return attn.num_kv_heads

    def forward(
        self, batch: ForwardBatch, kv_pool: KVPool, backend: AttentionBackend
    ) -> torch.Tensor:
        """Run one flat batch; returns float32 logits ``[len(batch.sample_indices), vocab]``."""
        h = self.forward_layers(self.embed(batch), batch, kv_pool, backend)
        return self.compute_logits(h, batch)

    def embed(self, batch: ForwardBatch) -> torch.Tensor:
        """``[T]`` token ids -> ``[T, hidden]``."""
        h: torch.Tensor = self.embed_tokens(batch.input_ids)
        return h

    def forward_layers(
        self, h: torch.Tensor, batch: ForwardBatch, kv_pool: KVPool, backend: AttentionBackend
    ) -> torch.Tensor:
        """``[T, hidden] -> [T, hidden]`` through ``layer_range``; ``kv_pool`` holds exactly
        those layers (its layer 0 is ``layer_range.start``)."""
        first = self.layer_range.start
        for i in self.layer_range:
            h = self.layers[i](h, batch, kv_pool.layers[i - first], backend)
        return h

    def compute_logits(self, h: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Final norm and LM head on the sampled rows: ``[T, hidden] -> [S, vocab]`` float32."""
        if batch.return_hidden:  # an EAGLE head reads every token's final state (speculative/)
            h = batch.hidden_states = self.norm(h)
            return self.lm_head(h[batch.sample_indices]).float()
        return self.lm_head(self.norm(h[batch.sample_indices])).float()

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Copy checkpoint tensors ``(hf_name, tensor)`` into our (partly merged) parameters.

        A tensor is a ``torch.Tensor`` or the loader's ``LazyTensor`` (read only when copied)."""
        load_packed_weights(self, weights, prefix_map={"model.": ""})
