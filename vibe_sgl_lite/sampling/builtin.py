"""The built-in plugins every engine registers; each acts only on requests whose
``SamplingParams`` ask for it (``Plugin.applies``), so an unused one costs nothing."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from vibe_sgl_lite.sampling.logit_bias import LogitBias
from vibe_sgl_lite.sampling.plugins import Plugin


def builtin_plugins(hf_tokenizer: PreTrainedTokenizerBase) -> list[Plugin]:
    def encode(text: str) -> list[int]:
        return list(hf_tokenizer.encode(text, add_special_tokens=False))

    return [LogitBias(encode)]
