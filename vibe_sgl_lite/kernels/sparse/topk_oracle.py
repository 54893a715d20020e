"""The top-k oracle: each KV head reads exactly the ``k`` keys with the highest true scores.

It computes every score first (so it saves no work): the upper bound of what any selection of
``k`` keys can achieve, to compare cheaper methods against. With GQA a key's score for a KV head
is the largest over the query heads that share it.
"""

from __future__ import annotations

import math

import torch

from vibe_sgl_lite.kernels.sparse.method import (
    AttentionMethod,
    DecodeView,
    KVSelection,
    ceil_fraction,
)
from vibe_sgl_lite.utils.settings import check_fraction, check_int


class TopKOracleAttention(AttentionMethod):
    name = "topk_oracle"

    def __init__(self, budget: int | None = None, selection_ratio: float | None = None) -> None:
        super().__init__()
        if (budget is None) == (selection_ratio is None):
            raise ValueError(
                "topk_oracle needs exactly one of budget (tokens, an integer >= 1) or "
                f"selection_ratio (in (0, 1]); got {budget!r} and {selection_ratio!r}"
            )
        self.budget = None if budget is None else check_int("budget", budget, minimum=1)
        self.ratio = (
            None if selection_ratio is None else check_fraction("selection_ratio", selection_ratio)
        )

    def select(self, view: DecodeView) -> KVSelection:
        keys, valid = view.keys(torch.float32)  # [Bd, L, Hkv, D], [Bd, L]
        scores = torch.einsum("bhgd,blhd->bhgl", view.grouped_q.float(), keys).amax(dim=2)
        scores = scores.masked_fill(~valid[:, None, :], -math.inf)  # [Bd, Hkv, L]
        lens = view.seq_lens
        if self.budget is not None:
            kept = lens.clamp(max=self.budget)
        else:
            assert self.ratio is not None
            kept = ceil_fraction(lens, self.ratio).clamp(min=1).minimum(lens)
        k = int(kept.max())
        positions = scores.topk(k, dim=-1).indices  # [Bd, Hkv, k]
        chosen = torch.arange(k, device=scores.device)[None, None, :] < kept[:, None, None]
        return KVSelection.from_positions(view, positions, chosen.expand_as(positions))
