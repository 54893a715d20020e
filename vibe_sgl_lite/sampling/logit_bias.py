"""``LogitBias``: the plugin behind ``logit_bias``, ``allowed_token_ids`` and ``bad_words``.

Per step, for the rows of requests that use any of the three, as tensor ops on ``[R, V]``:

    logit_bias         logits[r, t] += bias                    (OpenAI: bias in [-100, 100])
    allowed_token_ids  logits[r, t] = -inf for every t not listed
    bad_words          logits[r, last] = -inf when the output ends with the word's other tokens
                       (a one-token word is banned outright); each word is tokenised without
                       and with a leading space, as vLLM does, so both spellings are caught
                       however the user wrote it

Index tensors are built once per request (its first step) and concatenated per step: one
``index_put_`` each for the biases, the allowed-token mask and the bans, however many rows use
them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from vibe_sgl_lite.sampling.params import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow


@dataclass
class _Rules:
    bias_ids: torch.Tensor  # [n] long
    bias_values: torch.Tensor  # [n] float32
    allowed_ids: torch.Tensor | None  # [m] long
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

    def add_request(self, request_id: int, params: SamplingParams, vocab_size: int) -> None:
        for field, ids in (
            ("logit_bias", list(params.logit_bias or {})),
            ("allowed_token_ids", params.allowed_token_ids or []),
        ):
            bad = [t for t in ids if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"{field} token ids must be in [0, {vocab_size}), got {bad[0]}")

    def _rules_of(self, row: PluginRow, device: torch.device) -> _Rules:
        rules = self._rules.get(row.request_id)
        if rules is None:
            params = row.params
            words: list[list[int]] = []
            for word in params.bad_words or []:
                bare = word.lstrip(" ")
                for spelling in (bare, " " + bare):
                    ids = self.encode(spelling)
                    if ids and ids not in words:
                        words.append(ids)
            bias = params.logit_bias or {}
            allowed = params.allowed_token_ids
            rules = _Rules(
                torch.tensor(list(bias), dtype=torch.long, device=device),
                torch.tensor(list(bias.values()), dtype=torch.float32, device=device),
                None if allowed is None else torch.tensor(allowed, device=device),
                words,
            )
            self._rules[row.request_id] = rules
        return rules

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        device = logits.device
        bias_rows: list[torch.Tensor] = []
        bias_ids: list[torch.Tensor] = []
        bias_values: list[torch.Tensor] = []
        allow_rows: list[torch.Tensor] = []
        allow_ids: list[torch.Tensor] = []
        ban_rows: list[int] = []
        ban_ids: list[int] = []
        for r, row in enumerate(rows):
            rules = self._rules_of(row, device)
            if len(rules.bias_ids):
                bias_rows.append(torch.full_like(rules.bias_ids, r))
                bias_ids.append(rules.bias_ids)
                bias_values.append(rules.bias_values)
            if rules.allowed_ids is not None:
                allow_rows.append(torch.full_like(rules.allowed_ids, r))
                allow_ids.append(rules.allowed_ids)
            output = row.output_ids
            for word in rules.bad_words:
                head = word[:-1]
                if not head or (len(output) >= len(head) and output[-len(head) :] == head):
                    ban_rows.append(r)
                    ban_ids.append(word[-1])
        if bias_ids:
            index = (torch.cat(bias_rows), torch.cat(bias_ids))
            logits.index_put_(index, torch.cat(bias_values).to(logits.dtype), accumulate=True)
        if allow_ids:
            restricted = torch.cat([r[:1] for r in allow_rows])  # one index per restricted row
            allowed = torch.zeros_like(logits, dtype=torch.bool)
            true = torch.tensor(True, device=device)
            allowed.index_put_((torch.cat(allow_rows), torch.cat(allow_ids)), true)
            logits.masked_fill_(~allowed & _rows_mask(logits, restricted), float("-inf"))
        if ban_ids:
            index = (torch.tensor(ban_rows, device=device), torch.tensor(ban_ids, device=device))
            logits.index_put_(index, logits.new_tensor(float("-inf")).expand(len(ban_ids)))
        self.num_masked_rows += len(rows)
        return logits

    def release(self, request_id: int) -> None:
        self._rules.pop(request_id, None)

    def stats(self) -> dict[str, float]:
        return {"rows": self.num_masked_rows}


def _rows_mask(logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``[R, 1]`` bool: True for the listed rows."""
    mask = torch.zeros(logits.shape[0], 1, dtype=torch.bool, device=logits.device)
    mask[rows] = True
    return mask
