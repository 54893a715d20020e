"""Verification: which drafts the target model agrees with, and the token that follows them.

A verify row gives the target's logits at ``k + 1`` positions: after the last accepted token
(judging draft 1), after draft 1 (judging draft 2), ..., after draft k (the bonus position).
Position ``j`` is processed exactly as a plain decode step would process it with drafts
``1..j`` already generated (penalties count them), so:

* **greedy** (temperature 0): draft ``j`` is accepted while it equals the argmax at position
  ``j``; the first mismatch is replaced by that argmax (or, all accepted, the argmax at the
  bonus position is added). Output is token-identical to non-speculative greedy decoding.
* **sampling**: the rejection rule of Leviathan et al. / Chen et al. (2023). With ``p`` the
  target's distribution at position ``j`` and ``q`` the one draft ``j`` was drawn from, both
  after the same penalties, temperature, top-k, top-p and min-p (``Sampler``'s
  ``sampling_probs``), accept draft ``x`` with probability ``min(1, p(x) / q(x))``; on
  rejection draw from the residual ``max(p - q, 0)`` normalised, and stop. Then

      P(output x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) r(x)
                  = min(p(x), q(x)) + max(p(x) - q(x), 0)  =  p(x),

  so every emitted token is distributed exactly as the target alone would sample it. A
  deterministic proposal (n-gram) is ``q = one-hot(x)``: accept with probability ``p(x)``,
  residual ``p`` without ``x``. Every random number comes from the request's own generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vibe_sgl_lite.sampling.sampler import (
    Sampler,
    TokenLogprobs,
    apply_penalties,
    argmax_rows,
    draw,
    sampling_probs,
)
from vibe_sgl_lite.scheduler.request import Request


@dataclass
class Verified:
    """One request's outcome: accepted drafts then one target token (``1 .. k + 1`` tokens)."""

    token_ids: list[int]
    num_accepted: int
    logprobs: list[TokenLogprobs | None]


def accept_sampled(
    p: torch.Tensor,
    drafts: Sequence[int],
    q: torch.Tensor | None,
    generator: torch.Generator | None,
) -> list[int]:
    """The rejection rule for one request. ``p [k + 1, V]``: the target's sampling
    distributions (rows sum to 1); ``q [k, V]`` the drafts' (None: deterministic drafts)."""
    tokens: list[int] = []
    for j, x in enumerate(drafts):
        q_x = 1.0 if q is None else float(q[j, x])
        u = float(torch.rand((), generator=generator, device=p.device))
        if u * q_x < float(p[j, x]):
            tokens.append(x)
            continue
        if q is None:
            residual = p[j].clone()
            residual[x] = 0.0
        else:
            residual = (p[j] - q[j]).clamp_min_(0.0)
        if not float(residual.sum()) > 0.0:  # p == q up to rounding: nothing to correct
            residual = p[j]
        tokens.append(int(draw(residual, generator)))
        return tokens
    tokens.append(int(draw(p[len(drafts)], generator)))
    return tokens


def verify(
    logits: torch.Tensor, raw_logits: torch.Tensor, requests: Sequence[Request]
) -> list[Verified]:
    """``logits [sum_i (1 + k_i), V]``: request ``i``'s ``1 + k_i`` rows are consecutive
    (``k_i = len(req.draft_ids)``, 0 for a plain decode or a finished prefill); ``raw_logits``
    the same before plugins (logprobs score the model)."""
    counts = [1 + len(req.draft_ids) for req in requests]
    owners = [i for i, c in enumerate(counts) for _ in range(c)]
    depth = [j for c in counts for j in range(c)]
    params = [requests[i].params for i in owners]
    outputs = [requests[i].output_ids + requests[i].draft_ids[:j] for i, j in zip(owners, depth)]
    penalised = apply_penalties(logits, params, [requests[i].prompt_ids for i in owners], outputs)
    best = argmax_rows(penalised).tolist()
    sampled_rows = [r for r, p in enumerate(params) if not p.is_greedy]
    probs = {}
    if sampled_rows:
        dist = sampling_probs(penalised[sampled_rows], [params[r] for r in sampled_rows])
        probs = dict(zip(sampled_rows, dist))
    results, offset = [], 0
    for req, count in zip(requests, counts):
        drafts = req.draft_ids
        if req.params.is_greedy:
            tokens = []
            for j in range(count):
                tokens.append(best[offset + j])
                if j == len(drafts) or drafts[j] != best[offset + j]:
                    break
        else:
            p = torch.stack([probs[offset + j] for j in range(count)])
            tokens = accept_sampled(p, drafts, req.draft_probs, req.generator)
        chosen = list(range(offset, offset + len(tokens)))
        logprobs = Sampler.logprobs(
            raw_logits[chosen], [req.params] * len(tokens), torch.tensor(tokens)
        )
        results.append(Verified(tokens, len(tokens) - 1, logprobs))
        offset += count
    return results
