"""``LogitBias``'s ``bad_words``, driven directly with the test tokenizer: a word is banned in
both of its spellings, without and with a leading space, however it was written, whose token sequences differ in a
byte-level BPE ("time" and " time" end in the same token after different heads; " the" is one
token, "the" two), so each spelling must be matched on its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from tests.sampling.plugin_rows import Row
from vibe_sgl_lite import SamplingParams
from vibe_sgl_lite.sampling.logit_bias import LogitBias

pytestmark = pytest.mark.unit

CONTEXT = [5, 6, 7]  # output tokens before the word starts


@pytest.fixture(scope="module")
def tokenizer(tokenizer_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """What the engine's ``LogitBias`` encodes a bad word with (``sampling/builtin.py``)."""
    return list(tokenizer.encode(text, add_special_tokens=False))


def banned_after(
    tokenizer: PreTrainedTokenizerBase, bad_words: list[str], output: list[int]
) -> set[int]:
    """The token ids ``LogitBias`` masks for a request with ``bad_words`` whose output so far
    is ``output``."""
    plugin = LogitBias(lambda text: encode(tokenizer, text))
    row = Row(request_id=0, params=SamplingParams(bad_words=bad_words), output_ids=output)
    logits = plugin.process_logits(torch.zeros(1, len(tokenizer)), [row])
    return set(torch.isneginf(logits[0]).nonzero().flatten().tolist())


@pytest.mark.parametrize("word", ["time", "the", "fox", "self", "brown"])
def test_a_word_without_a_space_is_banned_with_a_leading_space_too(
    tokenizer: PreTrainedTokenizerBase, word: str
) -> None:
    """Mid-text a word follows a space and tokenises differently from its start-of-text form;
    banning only the form as written would let ``" word"`` through."""
    plain, spaced = encode(tokenizer, word), encode(tokenizer, " " + word)
    assert plain != spaced  # the tokenizer does tell the two spellings apart
    for ids in (plain, spaced):
        assert ids[-1] in banned_after(tokenizer, [word], CONTEXT + ids[:-1]), ids
    # only the completion of a started word is banned: not its last token in any context
    # (unless that token is a whole spelling by itself)
    neutral = banned_after(tokenizer, [word], CONTEXT)
    assert neutral == {ids[0] for ids in (plain, spaced) if len(ids) == 1}


@pytest.mark.parametrize("word", [" time", " the", " fox", " self", " brown"])
def test_a_word_with_a_leading_space_is_banned_without_it_too(
    tokenizer: PreTrainedTokenizerBase, word: str
) -> None:
    """``" word"`` bans its own token sequence and that of ``"word"`` (the start of a text, or
    after a newline), as vLLM does."""
    spaced, plain = encode(tokenizer, word), encode(tokenizer, word.lstrip(" "))
    assert plain != spaced
    for ids in (spaced, plain):
        assert ids[-1] in banned_after(tokenizer, [word], CONTEXT + ids[:-1]), ids
