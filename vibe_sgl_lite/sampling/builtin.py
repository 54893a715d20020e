"""The built-in plugins every engine registers; each acts only on requests whose
``SamplingParams`` ask for it (``Plugin.applies``), so an unused one costs nothing."""

from __future__ import annotations

from collections.abc import Collection

from transformers import PreTrainedTokenizerBase

from vibe_sgl_lite.sampling.entropy import EntropyExit
from vibe_sgl_lite.sampling.logit_bias import LogitBias
from vibe_sgl_lite.sampling.plugins import Plugin
from vibe_sgl_lite.sampling.repetition import RepetitionStop
from vibe_sgl_lite.sampling.structured import StructuredOutput


def builtin_plugins(
    hf_tokenizer: PreTrainedTokenizerBase, *, eos_token_ids: Collection[int] = ()
) -> list[Plugin]:
    """``eos_token_ids``: the ids that end a request (structured output allows them once the
    output is complete); empty means the tokenizer's EOS."""

    def encode(text: str) -> list[int]:
        return list(hf_tokenizer.encode(text, add_special_tokens=False))

    return [
        LogitBias(encode),
        RepetitionStop(),
        EntropyExit(),
        StructuredOutput(hf_tokenizer, eos_token_ids),
    ]
