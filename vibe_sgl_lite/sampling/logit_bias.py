"""``LogitBias``: the plugin behind ``logit_bias``, ``allowed_token_ids`` and ``bad_words``.

Per step, for the rows of requests that use any of the three, as tensor ops on ``[R, V]``:

    logit_bias         logits[r, t] += bias                    (OpenAI: bias in [-100, 100])
    allowed_token_ids  logits[r, t] = -inf for every t not listed
    bad_words          logits[r, last] = -inf when the output ends with the word's other tokens
                       (a one-token word is banned outright); each word is tokenised as written
                       and with a leading space, as vLLM does, so both spellings are caught

Index tensors are built once per request (when it is queued) and concatenated per step: one
``index_put_`` for the biases and one for the masks, however many rows use them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vibe_sgl_lite.sampling.params import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow


@dataclass
class _Rules:
    bias_ids: list[int]
    bias_values: list[float]
    allowed_ids: list[int] | None
    bad_words: list[list[int]]  # token sequences, each non-empty


class LogitBias(Plugin):
    name = "logit_bias"

    def __init__(self, encode: Callable[[str], list[int]]) -> None:
        """``encode``: text -> token ids without special tokens (for ``bad_words``)."""
        self.encode = encode
        self._rules: dict[int, _Rules] = {}
        self.num_masked_rows = 0

    def applies(self, params: SamplingParams) -> bool:
        return bool(params.logit_bias or params.allowed_token_ids or params.bad_words)

    def validate(self, params: SamplingParams, vocab_size: int) -> None:
        for field, ids in (
            ("logit_bias", list(params.logit_bias or {})),
            ("allowed_token_ids", params.allowed_token_ids or []),
        ):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{field} token ids must be in [0, {vocab_size}), got {bad[0]}")

    def _rules_of(self, row: PluginRow) -> _Rules:
        rules = self._rules.get(row.request_id)
        if rules is None:
            params = row.params
            words: list[list[int]] = []
            for word in params.bad_words or []:
                for spelling in (word, " " + word.lstrip(" ")):
                    ids = self.encode(spelling)
                    if ids and ids not in words:
                        words.append(ids)
            bias = params.logit_bias or {}
            rules = _Rules(list(bias), list(bias.values()), params.allowed_token_ids, words)
            self._rules[row.request_id] = rules
        return rules

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        bias_rows: list[int] = []
        bias_ids: list[int] = []
        bias_values: list[float] = []
        ban_rows: list[int] = []
        ban_ids: list[int] = []
        allowed = torch.zeros_like(logits, dtype=torch.bool)
        restricted: list[int] = []
        for r, row in enumerate(rows):
            rules = self._rules_of(row)
            bias_rows += [r] * len(rules.bias_ids)
            bias_ids += rules.bias_ids
            bias_values += rules.bias_values
            if rules.allowed_ids is not None:
                restricted.append(r)
                allowed[r, rules.allowed_ids] = True
            output = row.output_ids
            for word in rules.bad_words:
                head = word[:-1]
                if not head or (len(output) >= len(head) and output[-len(head) :] == head):
                    ban_rows.append(r)
                    ban_ids.append(word[-1])
        device = logits.device
        if bias_ids:
            index = (torch.tensor(bias_rows, device=device), torch.tensor(bias_ids, device=device))
            logits.index_put_(index, logits.new_tensor(bias_values), accumulate=True)
        if restricted:
            rows_t = torch.tensor(restricted, device=device)
            logits[rows_t] = logits[rows_t].masked_fill(~allowed[rows_t], float("-inf"))
        if ban_ids:
            index = (torch.tensor(ban_rows, device=device), torch.tensor(ban_ids, device=device))
            logits.index_put_(index, logits.new_tensor(float("-inf")).expand(len(ban_ids)))
        self.num_masked_rows += len(rows)
        return logits

    def release(self, request_id: int) -> None:
        self._rules.pop(request_id, None)

    def stats(self) -> dict[str, float]:
        return {"rows": self.num_masked_rows}
