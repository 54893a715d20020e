"""EAGLE proposals: a one-layer head drafts from the target's own last hidden states.

The head (``eagle_head.py``) reads, at position ``p``, the token ``t_p`` and the target's
final hidden state ``f_{p-1}`` (the vector its LM head turned into the logits that chose
``t_p``), and predicts ``f_p``; the target's LM head turns that into the next token. Drafting
``k`` tokens feeds each prediction back as the next step's feature:

    known        f_0 .. f_{L-2}  (target)          t_0 .. t_{L-1}
    step 1       head(f_{L-2}, t_{L-1})   -> f^_{L-1} -> lm_head -> d_1
    step j       head(f^_{L+j-3}, d_{j-1}) -> f^_{L+j-2} -> lm_head -> d_j

The head's one-layer KV pool mirrors the target's page tables, like a draft model's
(``draft_model.py``). Its K/V is kept only where it was computed from the target's true
features: after verification the accepted positions are recomputed from the verify row's
hidden states at the start of the next proposal, as EAGLE does.

Per request it keeps ``seen`` (positions whose head K/V is right) and ``pending``: the
target's features ``f_{seen-1} ..`` that the head has not consumed yet.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.worker import ModelWorker
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.chain import draft_chain
from vibe_sgl_lite.speculative.eagle_head import EagleHead
from vibe_sgl_lite.speculative.proposer import Draft, Proposer

MAX_PENDING = 32
"""Plain decodes whose features wait for the next proposal; past it the head catches up."""


class EagleProposer(Proposer):
    name = "eagle"
    needs_hidden_states = True

    def __init__(self, head: EagleHead, target: ModelWorker) -> None:
        self.head, self.target = head, target
        pool = target.kv_pool
        self.pool = head.new_kv_pool(pool.num_pages, pool.page_size, pool.dtype, target.device)
        self.hidden_size = head.config.hidden_size
        self.seen: dict[int, int] = {}
        # f_{seen-1} ..: pieces concatenated only when the head consumes them (a plain decode
        # appends one row per step, and a torch.cat per request per step would cost more)
        self.pending: dict[int, list[torch.Tensor]] = {}
        self.verify_states: dict[int, torch.Tensor] = {}

    def _run(self, rows: Sequence[BatchRow], features: torch.Tensor) -> torch.Tensor:
        """The head over ``rows`` (``features [T, H]``, one per token); returns its output at
        each row's last token ``[len(rows), H]``."""
        batch = ForwardBatch.build(rows, self.target.page_size, self.target.device)
        self.target.attention.prepare(batch)
        embed = self.target.model.embed_tokens
        out = self.head(batch.input_ids, features, batch, self.pool, self.target.attention, embed)
        return out[batch.sample_indices]

    def _start(self, req: Request, start: int) -> None:
        if req.request_id not in self.seen:  # new, or back after preemption
            self.seen[req.request_id] = start
            self.pending[req.request_id] = [
                torch.zeros(1, self.hidden_size, device=self.target.device)
            ]  # f_{start-1}: unknown after a prefix hit, nothing before position 0

    def observe(
        self, requests: Sequence[Request], rows: Sequence[BatchRow], hidden: torch.Tensor | None
    ) -> None:
        assert hidden is not None
        catch_up: list[tuple[Request, int]] = []
        offset = 0
        for req, row in zip(requests, rows):
            n = len(row.token_ids)
            states = hidden[offset : offset + n]
            offset += n
            if row.num_logits > 1:  # verify row: kept until ``accepted`` says how much is true
                self.verify_states[req.request_id] = states
                continue
            self._start(req, row.start_pos)
            rid = req.request_id
            self.pending[rid].append(states)
            if n > 1 or len(self.pending[rid]) > MAX_PENDING:
                catch_up.append((req, row.start_pos + n))
        if catch_up:
            rows_, feats = [], []
            for req, end in catch_up:
                rid, seen = req.request_id, self.seen[req.request_id]
                rows_.append(BatchRow(req.token_ids[seen:end], seen, req.page_table, True))
                pending = torch.cat(self.pending[rid])
                feats.append(pending[:-1])
                self.pending[rid] = [pending[-1:]]
                self.seen[rid] = end
            self._run(rows_, torch.cat(feats))

    def propose(self, requests: Sequence[Request]) -> list[Draft]:
        rows, feats = [], []
        for req in requests:  # step 1: every position the head has not seen, to the last token
            rid, seen = req.request_id, self.seen.get(req.request_id, req.num_computed_tokens)
            self._start(req, seen)
            rows.append(BatchRow(req.token_ids[seen:], seen, req.page_table, True))
            feats.append(torch.cat(self.pending[rid]))
            self.seen[rid] = len(req.token_ids)
            self.pending[rid] = []
        return draft_chain(requests, rows, self._draft_step, torch.cat(feats))

    def _draft_step(
        self, rows: list[BatchRow], features: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One chain step: the head's predicted features ``[rows, H]`` feed the next step."""
        assert features is not None
        out = self._run(rows, features)
        return self.target.model.lm_head(out).float(), out

    def accepted(self, req: Request, num_accepted: int) -> None:
        rid = req.request_id
        states = self.verify_states.pop(rid)
        self.pending[rid] = [states[: num_accepted + 1]]  # f_{L-1} .. f_{L-1+a}: true features
        self.seen[rid] = min(self.seen[rid], req.num_computed_tokens)

    def release(self, req: Request) -> None:
        for table in (self.seen, self.pending, self.verify_states):
            table.pop(req.request_id, None)


def eagle_proposer(
    head_path: str | None, model_path: str, executor: object, target_config: ModelConfig
) -> EagleProposer:
    """The head at ``head_path``, or the one shipped beside the bundled model
    (``<model>-eagle``); refuses a target it was not trained for."""
    if head_path is None:
        model = Path(model_path).resolve()
        shipped = model.parent / f"{model.name}-eagle"
        if not (shipped / "config.json").exists():
            raise ValueError(
                "speculative_algorithm='eagle' needs speculative_draft_model_path (an EAGLE head "
                "folder: config.json + model.safetensors); only the bundled model ships one"
            )
        head_path = str(shipped)
    if not isinstance(executor, ModelWorker):
        raise ValueError(
            "speculative_algorithm='eagle' needs the model in this process (tp_size=1)"
        )
    dtype = next(executor.model.parameters()).dtype
    head = EagleHead.from_pretrained(head_path, target_config, executor.device, dtype)
    return EagleProposer(head, executor)
