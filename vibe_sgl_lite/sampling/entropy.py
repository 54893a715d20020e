"""``EntropyExit``: end a request once the model has been sure of itself for a while
(``enable_entropy_early_exit``).

A run of near-certain next tokens (entropy close to 0) is typical of a model copying or
looping; stopping there saves the rest of ``max_tokens``. Per step, for the rows of requests
that ask for it:

    process_logits   H[r] = -sum_v p[r, v] * ln p[r, v],  p = softmax(logits[r])   (nats)
                     one batched op over [R, V] and one transfer of R floats; the logits are
                     returned unchanged
    after_token      low = H[r] < entropy_threshold
                     run = run + 1 if low else 0           (consecutive low-entropy steps)
                     finish with "entropy" when len(output incl. the new token) >=
                     min_tokens_before_exit and run >= entropy_exit_steps

The entropy is that of the logits this plugin receives: the model's, after the plugins
registered before it (a masked token, probability 0, adds 0) and before temperature, top-k,
top-p and min-p, so it measures the model, not the sampling settings. Each row's value depends
on its own logits only, so the exit does not depend on what else is in the batch.

Counter: ``early_exit_count`` (requests it finished).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vibe_sgl_lite.sampling.params import SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

FINISH_REASON = "entropy"


def next_token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``logits [R, V]`` -> entropy in nats ``[R]`` (float32; ``-inf`` logits count 0)."""
    probs = torch.softmax(logits.float(), dim=-1)
    entropy: torch.Tensor = torch.special.entr(probs).sum(dim=-1)
    return entropy


class EntropyExit(Plugin):
    """Finishes a request after a run of low-entropy steps; see the module docstring."""

    name = "entropy"

    def __init__(self) -> None:
        self._entropy: dict[int, float] = {}  # request id -> this step's entropy
        self._run: dict[int, int] = {}  # request id -> consecutive low-entropy steps so far
        self.early_exit_count = 0

    def applies(self, params: SamplingParams) -> bool:
        return params.enable_entropy_early_exit

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        for row, value in zip(rows, next_token_entropy(logits).tolist()):
            self._entropy[row.request_id] = value
        return logits

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        reasons: list[str | None] = []
        for row in rows:
            params, rid = row.params, row.request_id
            low = self._entropy[rid] < params.entropy_threshold  # set by process_logits
            run = self._run.get(rid, 0) + 1 if low else 0
            self._run[rid] = run
            length = len(row.output_ids) + 1  # the token just sampled is not in output_ids yet
            if length >= params.min_tokens_before_exit and run >= params.entropy_exit_steps:
                self.early_exit_count += 1
                reasons.append(FINISH_REASON)
            else:
                reasons.append(None)
        return reasons

    def release(self, request_id: int) -> None:
        self._entropy.pop(request_id, None)
        self._run.pop(request_id, None)

    def stats(self) -> dict[str, float]:
        return {"early_exit_count": self.early_exit_count}
