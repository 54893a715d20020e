"""Llama 2/3 and SmolLM2: the shared decoder as it is, every detail read from the config.

``attention_bias`` puts a bias on q, k, v and o; ``mlp_bias`` on gate, up and down;
``rope_scaling`` of type ``"llama3"`` (Llama 3.1+) rescales the rotary frequencies in
``layers._inv_freq``; ``tie_word_embeddings`` (SmolLM2, Llama 3.2 1B/3B) shares the embedding
with the LM head.
"""

from __future__ import annotations

from vibe_sgl_lite.models.decoder import DecoderForCausalLM


class LlamaForCausalLM(DecoderForCausalLM):
    """Llama-family causal LM (``meta-llama/Llama-3.2-1B``, ``HuggingFaceTB/SmolLM2-135M`` ...)."""
