"""``RankStage``: what one rank runs each step, for tensor and pipeline parallelism alike.

A rank holds a ``ModelWorker`` cut to its part (its tensor-parallel shard of its pipeline
stage's layers) and runs each step's rows as micro-batches (``pipeline_parallel.py``):

    for each micro-batch m (the step's rows, cut the same way on every rank):
        ForwardBatch.build(rows of m)            metadata rebuilt here, never sent
        first stage:  h = embed(ids)             else h = recv [T_m, hidden] from stage - 1
        h = layers of this stage (h)             its own KV pool, its own layers
        last stage:   logits of m                else isend h to stage + 1 (no wait: go on to m+1)

With ``pp_size = 1`` there is one stage and one micro-batch: exactly ``ModelWorker.forward``.
Each micro-batch's compute span is recorded (``timeline``), from which ``bubble_share`` says
how long the stages waited for each other.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence

import torch
import torch.distributed as dist

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.distributed.pipeline_parallel import (
    Span,
    StagePlan,
    StepTimes,
    split_microbatches,
)
from vibe_sgl_lite.models.worker import ModelWorker

TIMELINE_STEPS = 4096
"""Steps of micro-batch spans kept until read (``take_timeline``); older ones are dropped."""


class RankStage:
    """One rank's stage of the pipeline (``stage.size == 1``: the whole model, or its TP shard).

    ``prev_rank`` / ``next_rank``: the same tensor-parallel rank in the previous and next stage,
    which every TP rank of a stage talks to (after each layer's all-reduce every TP rank holds
    the whole ``[T, hidden]``)."""

    def __init__(
        self,
        worker: ModelWorker,
        stage: StagePlan,
        prev_rank: int | None,
        next_rank: int | None,
        dtype: torch.dtype,
    ) -> None:
        self.worker, self.stage = worker, stage
        self.prev_rank, self.next_rank = prev_rank, next_rank
        self.hidden_size = worker.model_config.hidden_size
        self.dtype = dtype  # of the hidden states that arrive from the previous stage
        self.timeline: deque[StepTimes] = deque(maxlen=TIMELINE_STEPS)

    @torch.inference_mode()
    def forward(self, rows: Sequence[BatchRow]) -> torch.Tensor | None:
        """This rank's part of one step; float32 logits ``[sampled rows, vocab]`` on the last
        stage, ``None`` elsewhere."""
        w, model = self.worker, self.worker.model
        logits: list[torch.Tensor] = []
        sends: list[tuple[dist.Work, torch.Tensor]] = []
        spans: list[Span] = []
        for micro in split_microbatches(rows, self.stage.size):
            batch = ForwardBatch.build(micro, w.page_size, w.device)
            if self.prev_rank is None:
                start = time.monotonic()
                h = model.embed(batch)
            else:
                h = torch.empty(
                    batch.num_tokens, self.hidden_size, dtype=self.dtype, device=w.device
                )
                dist.recv(h, src=self.prev_rank)
                start = time.monotonic()
            w.prepare(batch)
            h = model.forward_layers(h, batch, w.kv_pool, w.attention)
            if self.next_rank is None:
                logits.append(model.compute_logits(h, batch))
            else:
                work = dist.isend(h, dst=self.next_rank)
                assert work is not None
                sends.append((work, h))  # h must live until sent
            spans.append((start, time.monotonic()))
        for work, _ in sends:
            work.wait()
        tokens = sum(len(row.token_ids) for row in rows)
        self.timeline.append(StepTimes(tokens, len(rows), tuple(spans)))
        return torch.cat(logits) if logits else None

    def take_timeline(self) -> list[StepTimes]:
        """The records of the steps since the last call, oldest first; the record starts over."""
        steps = list(self.timeline)
        self.timeline.clear()
        return steps
