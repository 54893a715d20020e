"""Pipeline parallelism (PP): the layers cut into contiguous stages, micro-batches in flight.

``pp_size = 2`` on a 4-layer model, each stage its own process (``tp_size`` processes when
combined with tensor parallelism: rank = stage * stage_size + tp rank):

    stage 0 (ranks 0..)    embed_tokens, layers 0-1, KV pool of layers 0-1
    stage 1 (last)         layers 2-3, final norm, lm_head, KV pool of layers 2-3
                           (and embed_tokens too when the LM head is tied to it)

Every stage receives the step's rows (rank 0 broadcasts them) and cuts them the same way into
``pp_size`` micro-batches of about equal token counts (``split_microbatches``); each stage
builds each micro-batch's ``ForwardBatch`` itself from those rows, so only the hidden states
``[T_m, hidden]`` travel from stage to stage. Stage ``s`` runs micro-batch ``m`` while stage
``s + 1`` runs ``m - 1``:

    time ->     slot 1     slot 2     slot 3
    stage 0     [  mb 0  ][  mb 1  ] . . . . .     dots: idle, the pipeline's bubble
    stage 1     . . . . . [  mb 0  ][  mb 1  ]

A step of ``M`` micro-batches over ``P`` stages takes ``M + P - 1`` micro-batch slots instead
of ``M * P``: each stage idles ``(P - 1) / (M + P - 1)`` of the step (1/3 for ``M = P = 2``),
measured by ``bubble_share`` from the stages' own timelines (``stage.py``).

Cutting a row (a long prefill) between two micro-batches is sound because every stage runs its
micro-batches in order: the second piece reads the first piece's keys and values from the
stage's pool, exactly as a chunked prefill reads the previous chunk's.

A part of the model that another stage holds is replaced, before any memory is allocated, by
``HeldElsewhere``: no parameters, and its checkpoint tensors are skipped unread by the loader
(``models.weights.CheckpointViews``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.models.decoder import DecoderForCausalLM

Span = tuple[float, float]
"""``(start, end)`` of one micro-batch's compute on one rank, ``time.monotonic()`` seconds (the
same clock in every process of one machine)."""


@dataclass(frozen=True)
class StepTimes:
    """One step on one rank: its size (``tokens`` over ``rows``) and one ``Span`` per
    micro-batch."""

    tokens: int
    rows: int
    spans: tuple[Span, ...]

    @property
    def is_decode_only(self) -> bool:
        return self.tokens == self.rows


@dataclass(frozen=True)
class StagePlan:
    """Stage ``index`` of ``size``: which layers it runs; the first embeds, the last samples."""

    index: int
    size: int
    layers: range

    @property
    def is_first(self) -> bool:
        return self.index == 0

    @property
    def is_last(self) -> bool:
        return self.index == self.size - 1


def stage_layers(num_layers: int, pp_size: int, stage: int) -> range:
    """Stage ``stage``'s contiguous layers: ``num_layers`` split as evenly as possible, the
    earlier stages taking one more where it does not divide (the last also runs the LM head)."""
    if not 1 <= pp_size <= num_layers:
        raise ValueError(
            f"pp_size must be between 1 and the model's num_hidden_layers ({num_layers}), "
            f"got {pp_size}"
        )
    base, extra = divmod(num_layers, pp_size)
    start = stage * base + min(stage, extra)
    return range(start, start + base + (1 if stage < extra else 0))


def plan_stage(num_layers: int, pp_size: int, stage: int) -> StagePlan:
    return StagePlan(stage, pp_size, stage_layers(num_layers, pp_size, stage))


class HeldElsewhere(nn.Module):
    """A part of the model that another pipeline stage holds: no weights here, and the loader
    skips its checkpoint tensors without reading them."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def checkpoint_view(self, name: str, tensor: torch.Tensor) -> None:
        return None

    def forward(self, *args: object) -> torch.Tensor:
        raise RuntimeError(f"{self.name} is held by another pipeline stage")


def cut_to_stage(model: DecoderForCausalLM, stage: StagePlan) -> None:
    """Keep only ``stage``'s part of ``model`` (built on ``meta``), in place."""
    for i in range(len(model.layers)):
        if i not in stage.layers:
            model.layers[i] = HeldElsewhere(f"layer {i}")
    tied = model.config.tie_word_embeddings
    if not stage.is_first and not (tied and stage.is_last):
        model.embed_tokens = HeldElsewhere("embed_tokens")  # type: ignore[assignment]
    if not stage.is_last:
        model.norm = HeldElsewhere("norm")  # type: ignore[assignment]
        model.lm_head = HeldElsewhere("lm_head")  # type: ignore[assignment]
    model.layer_range = stage.layers


def split_microbatches(rows: Sequence[BatchRow], parts: int) -> list[list[BatchRow]]:
    """Cut a step's rows into at most ``parts`` micro-batches of about equal token counts, in
    order; a row that straddles a boundary is cut in two. A row's logits are those of its last
    ``num_logits`` tokens (a speculative verify row: ``k + 1``), so each piece samples the part
    of that tail it holds, always its own last tokens; an ``all_logits`` row returns each
    piece's logits.

    The logits of the micro-batches, concatenated, are the logits of the whole step."""
    total = sum(len(row.token_ids) for row in rows)
    parts = max(1, min(parts, total))
    bounds = [round(k * total / parts) for k in range(1, parts + 1)]
    batches: list[list[BatchRow]] = [[] for _ in range(parts)]
    part, offset = 0, 0  # offset: tokens of the step before the current row's next piece
    for row in rows:
        done = 0
        n = len(row.token_ids)
        while done < n:
            take = min(n - done, bounds[part] - offset)
            piece = row
            if take < n:
                tail = max(0, done + take - max(done, n - row.num_logits))  # logits it returns
                piece = dataclasses.replace(
                    row,
                    token_ids=row.token_ids[done : done + take],
                    start_pos=row.start_pos + done,
                    sample=row.sample and tail > 0,
                    num_logits=max(tail, 1),
                )
            batches[part].append(piece)
            done, offset = done + take, offset + take
            if offset == bounds[part] and part < parts - 1:
                part += 1
    return [b for b in batches if b]


def step_seconds(steps: Sequence[StepTimes]) -> float:
    """How long one step took: every rank's record of it, first start to last end."""
    spans = [span for step in steps for span in step.spans]
    return max(end for _, end in spans) - min(start for start, _ in spans)


def bubble_share(timelines: Sequence[Sequence[StepTimes]]) -> float:
    """Share of the ranks' time spent idle inside steps: ``1 - busy / (ranks * step time)``.

    ``timelines[r][j]``: rank ``r``'s record of step ``j`` (every rank saw the same steps). A
    step lasts from its first start to its last end on any rank; what a rank does not spend
    computing in it is bubble (and stage-to-stage transfer)."""
    if not timelines or not timelines[0]:
        raise ValueError("bubble_share needs at least one recorded step")
    busy = wall = 0.0
    for steps in zip(*timelines, strict=True):
        spans = [span for step in steps for span in step.spans]
        wall += max(end for _, end in spans) - min(start for start, _ in spans)
        busy += sum(end - start for start, end in spans)
    return 1.0 - busy / (len(timelines) * wall) if wall > 0 else 0.0
