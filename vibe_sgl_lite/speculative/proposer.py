"""The proposer interface: what every speculative algorithm provides to the engine.

    Speculator.plan      how many draft slots each decoding request gets this step
    Scheduler.schedule   reserves pages for the last token + its slots
    Proposer.propose     draft tokens per request (at most its slots), batched over requests
    target forward       one verify row per request: last token + drafts, logits at each
    Proposer.observe     a model-based proposer runs its own forward over the other rows, so
                         its KV stays in step with the target's (mirrored page tables)
    verify (verify.py)   accept a prefix of the drafts, then one token from the target
    Proposer.accepted    rejected drafts are forgotten (their slots will be overwritten)

A proposer never decides what is output: verification does, and greedy output equals
non-speculative greedy output whatever the drafts are. A bad proposer only wastes compute.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.scheduler.request import Request


@dataclass
class Draft:
    """Proposed continuation of one request: ``token_ids`` (``k`` of them, possibly 0) and,
    when they were drawn at random, ``probs [k, vocab]``: the distribution each was drawn
    from, which the acceptance rule divides by. ``None``: proposed deterministically
    (n-gram lookup, or a greedy draft), i.e. with probability 1."""

    token_ids: list[int]
    probs: torch.Tensor | None = None


class Proposer:
    """Base class: override ``propose``; model-based proposers also ``observe`` and ``release``."""

    name = "proposer"
    needs_hidden_states = False
    """Whether ``observe`` needs the target's final hidden state of every token (EAGLE)."""

    def propose(self, requests: Sequence[Request]) -> list[Draft]:
        """At most ``req.num_draft_slots`` tokens per request, continuing ``req.token_ids``;
        the pages of those slots are already allocated in ``req.page_table``."""
        raise NotImplementedError

    def observe(
        self, requests: Sequence[Request], rows: Sequence[BatchRow], hidden: torch.Tensor | None
    ) -> None:
        """After the target's forward over ``rows`` (``requests[i]`` owns ``rows[i]``);
        ``hidden [T, H]``: its final hidden states, when ``needs_hidden_states``."""

    def accepted(self, req: Request, num_accepted: int) -> None:
        """``req``'s verify row kept ``num_accepted`` drafts (``req.num_computed_tokens`` is
        already updated): forget the state of the rejected ones."""

    def release(self, req: Request) -> None:
        """``req`` gave its pages back (finished, aborted, preempted): drop its state."""
