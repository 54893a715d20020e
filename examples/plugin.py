"""A generation-control plugin in under 40 lines: one line of verse, a few words at least.

python examples/plugin.py
"""

from __future__ import annotations

import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin


class OneLine(Plugin):
    """Bans line breaks for the first ``min_tokens`` tokens, then ends the request at one."""

    name = "one_line"

    def __init__(self, newline_ids: list[int], min_tokens: int) -> None:
        self.newline_ids, self.min_tokens = newline_ids, min_tokens

    def process_logits(self, logits, rows):  # [rows, vocab]: tensor ops over the whole batch
        young = [i for i, row in enumerate(rows) if len(row.output_ids) < self.min_tokens]
        banned = torch.tensor(self.newline_ids)
        logits[young] = logits[young].index_fill(1, banned, float("-inf"))
        return logits

    def after_token(self, rows, tokens):  # a finish_reason per row, or None to go on
        return ["end_of_line" if t in self.newline_ids else None for t in tokens]


with ModelRunner() as runner:
    vocab = runner.tokenizer.hf.get_vocab().values()
    newline_ids = [i for i in vocab if "\n" in runner.tokenizer.decode([i])]
    params = SamplingParams(max_tokens=60, temperature=0.8, plugins=[OneLine(newline_ids, 4)])
    for out in runner.generate_outputs(["ROMEO: I", "JULIET: O", "HAMLET: To"], params):
        print(repr(out.text), out.finish_reason)
    print({k: v for k, v in runner.get_stats().items() if k.startswith("one_line.")})
