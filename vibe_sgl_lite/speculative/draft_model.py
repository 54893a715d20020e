"""Draft-model proposals: a smaller model with the same tokenizer guesses ``k`` tokens.

The draft model has its own KV pool with the target's page ids and page size, so that it
reads the target's page tables as they are ("mirrored"): a page the scheduler allocates,
shares through the prefix cache, rolls back or frees is the same page in both pools.

    target rows of a step     prefill chunks                 -> observe: the draft runs the
                                                                 same rows into its own pool
    verify rows               propose: k draft steps, batched over requests
      step 1  the tokens the draft has not seen (the last one; after a fully accepted run,
              also the last draft; after plain decodes, those)  -> draft 1
      step j  draft j-1                                         -> draft j
    after verification        accepted: the draft's K/V past the accepted tokens is stale

The k steps are ``chain.py``'s loop: greedy requests take the draft's argmax; sampled ones draw
from the draft's distribution under the request's own settings and generator, which
verification divides by (``verify.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.models.worker import ModelWorker
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.chain import draft_chain
from vibe_sgl_lite.speculative.proposer import Draft, Proposer


class DraftModelProposer(Proposer):
    name = "draft"

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker
        self.computed: dict[int, int] = {}  # request id -> tokens whose draft K/V is valid

    def _seen(self, req: Request, default: int) -> int:
        return self.computed.get(req.request_id, default)

    def observe(
        self, requests: Sequence[Request], rows: Sequence[BatchRow], hidden: torch.Tensor | None
    ) -> None:
        mirrored = []
        for req, row in zip(requests, rows):
            if len(row.token_ids) == 1 and row.start_pos >= req.num_prompt_tokens:
                continue  # a decode: the next proposal catches up on it (not paid when off)
            if row.num_logits > 1:
                continue  # a verify row: the draft saw its tokens while proposing them
            end = row.start_pos + len(row.token_ids)
            start = min(self._seen(req, row.start_pos), row.start_pos)
            mirrored.append(BatchRow(req.token_ids[start:end], start, req.page_table, False))
            self.computed[req.request_id] = end
        if mirrored:
            self.worker.forward(mirrored)

    def propose(self, requests: Sequence[Request]) -> list[Draft]:
        rows = []
        for req in requests:  # step 1: whatever the draft has not seen, up to the last token
            start = min(self._seen(req, req.num_computed_tokens), req.num_computed_tokens)
            rows.append(BatchRow(req.token_ids[start:], start, req.page_table, True))
        drafts = draft_chain(requests, rows, lambda step, _: (self.worker.forward(step), None))
        for req, draft in zip(requests, drafts):
            self.computed[req.request_id] = len(req.token_ids) + len(draft.token_ids) - 1
        return drafts

    def accepted(self, req: Request, num_accepted: int) -> None:
        seen = self._seen(req, req.num_computed_tokens)
        self.computed[req.request_id] = min(seen, req.num_computed_tokens)

    def release(self, req: Request) -> None:
        self.computed.pop(req.request_id, None)
