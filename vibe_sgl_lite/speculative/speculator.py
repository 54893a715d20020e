"""``Speculator``: the engine's one seam for speculative decoding.

    Engine.step with speculation
      speculator.plan(running)          draft slots per decoding request (0: plain decode)
      scheduler.schedule()              pages for 1 + slots tokens, never by preempting
      speculator.propose(scheduled)     the proposer fills req.draft_ids
      scheduler.rows(scheduled)         verify rows: last token + drafts
      speculator.execute(rows)          the target forward (+ the proposer's own, mirrored)
      speculator.verify(logits)         accepted drafts + one token per request (verify.py)
      outputs.process(token) ...        token by token: a stop inside the run cuts it there
      scheduler.accept(req, n)          rejected slots dropped, their pages freed

When it pays: a decode step at small batch reads every weight to produce one token per row;
a verify row of ``k + 1`` tokens costs about the same while the products stay bound by
memory. So speculation is switched off where it cannot pay (``plan``):

* per request, when after ``MIN_ROWS_JUDGED`` verify rows they produced fewer than
  ``MIN_TOKENS_PER_ROW`` tokens each on average (n-gram lookup on free text): a verify row and
  its drafting cost more than a decode, so fewer tokens per row than that lose time;
* per step, while more than ``speculative_disable_batch_size`` requests decode: the products
  have become compute-bound and a verify row costs ``k + 1`` decodes (``docs/speculative.md``
  has the measured curve);
* for greedy requests, per batch-size bucket, wherever speculating measured fewer decode
  tokens per second than not speculating (``guard.py``);
* for requests whose generation-control plugins see one position per step (structured
  output, logit bias, repetition and entropy checks, user plugins): they decode plainly
  rather than risk a different output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Sequence

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.guard import ThroughputGuard
from vibe_sgl_lite.speculative.proposer import Proposer
from vibe_sgl_lite.speculative.verify import Verified, verify

MIN_ROWS_JUDGED = 4
MIN_TOKENS_PER_ROW = 1.5
DEFAULT_DISABLE_BATCH_SIZE = 8


class Speculator:
    def __init__(
        self,
        proposer: Proposer,
        num_draft_tokens: int,
        max_model_len: int,
        disable_batch_size: int | None = None,
        adaptive: bool = True,
    ) -> None:
        self.proposer = proposer
        self.k = num_draft_tokens
        self.max_model_len = max_model_len
        self.disable_batch_size = disable_batch_size or DEFAULT_DISABLE_BATCH_SIZE
        self.switched_off: set[int] = set()  # request ids whose drafts were mostly rejected
        self.num_verify_rows = 0
        self.num_draft_tokens = 0
        self.num_accepted_tokens = 0
        self.accepted_per_position: Counter[int] = Counter()  # draft j (from 0) accepted
        self.guard = ThroughputGuard() if adaptive else None

    def plan(self, running: Sequence[Request], plugin_requests: Collection[int]) -> None:
        """Set ``num_draft_slots`` of every running request (before ``schedule``)."""
        decoding = [r for r in running if r.num_uncomputed_tokens == 1]
        off_for_batch = len(decoding) > self.disable_batch_size
        greedy_on = bool(decoding) and (self.guard is None or self.guard.choose(len(decoding)))
        for req in running:
            req.num_draft_slots = 0
            if off_for_batch or req.num_uncomputed_tokens != 1:
                continue
            if req.params.is_greedy and not greedy_on:
                continue
            if req.request_id in self.switched_off or req.request_id in plugin_requests:
                continue
            room = min(
                req.params.max_tokens - req.num_output_tokens - 1,
                self.max_model_len - len(req.token_ids) - 1,
            )
            req.num_draft_slots = max(0, min(self.k, room))

    def propose(self, requests: Sequence[Request]) -> None:
        """Fill ``draft_ids`` (and ``draft_probs``) of the scheduled requests that have slots."""
        asking = [r for r in requests if r.num_draft_slots > 0]
        if not asking:
            return
        for req, draft in zip(asking, self.proposer.propose(asking)):
            req.draft_ids = draft.token_ids[: req.num_draft_slots]
            req.draft_probs = draft.probs

    def execute(
        self, executor: object, requests: Sequence[Request], rows: Sequence[BatchRow]
    ) -> torch.Tensor:
        """The target's forward; a model-based proposer then runs its own over the same rows."""
        hidden = None
        if self.proposer.needs_hidden_states:
            logits, batch = executor.forward_with_hidden(rows)  # type: ignore[attr-defined]
            hidden = batch.hidden_states
        else:
            logits = executor.execute(rows)  # type: ignore[attr-defined]
        self.proposer.observe(requests, rows, hidden)
        if self.guard is None:
            pass
        elif any(len(row.token_ids) > row.num_logits for row in rows):
            self.guard.discard()  # a prefill in the step: its time is not a decode's
        elif not any(r.draft_ids for r in requests):
            self.guard.record(len(rows))
        result: torch.Tensor = logits
        return result

    def verify(
        self, logits: torch.Tensor, raw_logits: torch.Tensor, requests: Sequence[Request]
    ) -> list[Verified]:
        """Accepted drafts + one target token per request; records acceptance."""
        results = verify(logits, raw_logits, requests)
        if self.guard is not None:
            self.guard.record(sum(len(r.token_ids) for r in results))
        for req, result in zip(requests, results):
            if not req.draft_ids:
                continue
            proposed = len(req.draft_ids)
            self.num_verify_rows += 1
            self.num_draft_tokens += proposed
            self.num_accepted_tokens += result.num_accepted
            self.accepted_per_position.update(range(result.num_accepted))
            req.num_verify_rows += 1
            req.num_draft_tokens += proposed
            req.num_accepted_tokens += result.num_accepted
            rows = req.num_verify_rows
            if (
                rows >= MIN_ROWS_JUDGED
                and rows + req.num_accepted_tokens < MIN_TOKENS_PER_ROW * rows
            ):
                self.switched_off.add(req.request_id)
        return results

    def accepted(self, req: Request, num_accepted: int) -> None:
        self.proposer.accepted(req, num_accepted)

    def release(self, req: Request) -> None:
        self.switched_off.discard(req.request_id)
        self.proposer.release(req)

    def stats(self) -> dict[str, float | int]:
        """Drafts proposed and accepted, and the tokens each verify row produced on average."""
        rows, drafts = self.num_verify_rows, self.num_draft_tokens
        return {
            "spec_num_verify_rows": rows,
            "spec_num_draft_tokens": drafts,
            "spec_num_accepted_tokens": self.num_accepted_tokens,
            "spec_acceptance_rate": self.num_accepted_tokens / drafts if drafts else 0.0,
            "spec_mean_accepted_length": (
                (self.num_accepted_tokens + rows) / rows if rows else 0.0
            ),
        }
