"""Prompt lookup (n-gram) proposals: copy what followed the last time the context's tail occurred.

    context   ... the cat sat on the mat . the cat | ?          (prompt + output so far)
    tail n=2  "the cat"  -> found earlier, followed by "sat on the mat"
    proposal  sat on the mat                                     (up to k tokens)

Longer tails are tried first (``speculative_ngram_max`` down to ``speculative_ngram_min``); the
most recent earlier occurrence wins. No model runs: on text that copies its input (editing
code, summarising, extracting) most proposals are right; on free text few are, and the
speculator's per-request acceptance rule turns speculation off for such requests.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.proposer import Draft, Proposer


def ngram_lookup(context: Sequence[int], k: int, n_min: int, n_max: int) -> list[int]:
    """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest tail
    of ``context`` (``n_max`` tokens down to ``n_min``) that occurred before; [] if none did."""
    ids = np.asarray(context, dtype=np.int64)
    size = len(ids)
    for n in range(min(n_max, size - 1), n_min - 1, -1):
        windows = np.lib.stride_tricks.sliding_window_view(ids[:-1], n)  # every earlier n-gram
        hits = np.flatnonzero((windows == ids[size - n :]).all(axis=1))
        if len(hits):
            start = int(hits[-1]) + n
            return [int(t) for t in ids[start : start + k]]
    return []


class NgramProposer(Proposer):
    name = "ngram"

    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min, self.n_max = n_min, n_max

    def propose(self, requests: Sequence[Request]) -> list[Draft]:
        return [
            Draft(ngram_lookup(req.token_ids, req.num_draft_slots, self.n_min, self.n_max))
            for req in requests
        ]
