"""Qwen2 / Qwen2.5: the shared decoder with a bias on q, k and v (and none on o), no q/k-norm.

Qwen2's config has no ``attention_bias`` field: the biases are part of the architecture, so the
class fixes them. Sliding-window attention (``use_sliding_window``, or ``layer_types`` naming
``sliding_attention``) is refused by ``DecoderForCausalLM.check_config``; released Qwen2.5
checkpoints leave it off, and their ``sliding_window`` value is then ignored, as transformers does.
"""

from __future__ import annotations

from vibe_sgl_lite.models.decoder import DecoderForCausalLM


class Qwen2ForCausalLM(DecoderForCausalLM):
    """Qwen2 / Qwen2.5 causal LM (``Qwen/Qwen2.5-0.5B-Instruct`` ...)."""

    qkv_bias = True
    o_bias = False
