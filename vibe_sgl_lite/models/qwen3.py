"""Qwen3 (dense): the shared decoder with an RMSNorm over every query and key head.

    h = h + Attention(RMSNorm(h))       q/k RMS-normed per head (``head_dim``), then rotary
    h = h + GatedMLP(RMSNorm(h))        SwiGLU

``attention_bias`` (false in every released Qwen3) adds a bias to q/k/v and o, as in transformers.
The decoder itself lives in ``decoder.py``.
"""

from __future__ import annotations

from vibe_sgl_lite.models.decoder import DecoderForCausalLM


class Qwen3ForCausalLM(DecoderForCausalLM):
    """Qwen3 dense causal LM (``Qwen/Qwen3-0.6B`` ...)."""

    qk_norm = True
