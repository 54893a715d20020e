"""A chain of draft tokens, batched over requests: the loop every model-based proposer runs.

    step 1     rows the proposer builds (whatever its model has not seen, to the last token)
    step j     one row per request still drafting: draft ``j - 1`` at its position
    each step  ``forward(rows, state) -> (logits [rows, V], state)``, then ``pick`` one token
               per row; a request stops after ``req.num_draft_slots`` drafts

``state`` is what a step hands to the next, one row per request still drafting (EAGLE: the
head's predicted features ``[rows, H]``; a draft model needs none). ``pick`` processes the
draft's logits as the target will (penalties, temperature, top-k/p, min-p): greedy requests
take the argmax, sampled ones draw with their own generator and keep the distribution, which
verification divides by (``verify.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.sampling.sampler import apply_penalties, argmax_rows, draw, sampling_probs
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.proposer import Draft

DraftStep = Callable[
    [list[BatchRow], torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]
]
"""``(rows, state) -> (logits [len(rows), V], state for the rows of the next step)``."""


def pick(
    logits: torch.Tensor, requests: Sequence[Request], drafted: Sequence[list[int]]
) -> tuple[list[int], list[torch.Tensor | None]]:
    """One draft token per request from the draft's ``logits [len(requests), V]``, processed as
    the target's will be (penalties over output + drafts so far, temperature, top-k/p, min-p);
    returns the tokens and, for sampled requests, the distribution each was drawn from."""
    params = [r.params for r in requests]
    outputs = [r.output_ids + d for r, d in zip(requests, drafted)]
    penalised = apply_penalties(logits, params, [r.prompt_ids for r in requests], outputs)
    tokens = argmax_rows(penalised).tolist()
    probs: list[torch.Tensor | None] = [None] * len(requests)
    sampled = [i for i, p in enumerate(params) if not p.is_greedy]
    if sampled:
        dist = sampling_probs(penalised[sampled], [params[i] for i in sampled])
        for row, i in zip(dist, sampled):
            tokens[i] = int(draw(row, requests[i].generator))
            probs[i] = row
    return tokens, probs


def draft_chain(
    requests: Sequence[Request],
    rows: list[BatchRow],
    forward: DraftStep,
    state: torch.Tensor | None = None,
) -> list[Draft]:
    """Up to ``req.num_draft_slots`` drafts per request; ``rows[i]`` (step 1) is request
    ``i``'s, ``state`` the first step's (``DraftStep``)."""
    drafted: list[list[int]] = [[] for _ in requests]
    probs: list[list[torch.Tensor]] = [[] for _ in requests]
    active = list(range(len(requests)))
    while active:
        logits, state = forward(rows, state)
        tokens, dists = pick(logits, [requests[i] for i in active], [drafted[i] for i in active])
        for i, token, dist in zip(active, tokens, dists):
            drafted[i].append(token)
            if dist is not None:
                probs[i].append(dist)
        keep = [j for j, i in enumerate(active) if len(drafted[i]) < requests[i].num_draft_slots]
        active = [active[j] for j in keep]
        state = None if state is None else state[keep]
        rows = [
            BatchRow(
                [drafted[i][-1]],
                len(requests[i].token_ids) + len(drafted[i]) - 1,
                requests[i].page_table,
                True,
            )
            for i in active
        ]
    return [Draft(d, torch.stack(p) if p else None) for d, p in zip(drafted, probs)]
