"""Executors: where the forward pass runs, behind one small interface.

The engine hands an executor the rows of one step (``BatchRow``s: plain token ids, positions and
page tables) and gets back the logits of the rows that sample. ``LocalExecutor`` runs a
``ModelWorker`` in this process; ``distributed/`` runs one worker per rank (tensor and expert
parallelism) behind the same methods, so the engine does not know which it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.models.worker import ModelWorker


class ModelExecutor(Protocol):
    is_driver: bool
    """False only on ``torchrun`` ranks other than 0, which serve their shard and never drive."""

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        """One forward over ``rows``; float32 logits ``[num sampling rows, vocab]``."""
        ...

    def close(self) -> None:
        """Release the model and stop any worker processes; idempotent."""
        ...


class LocalExecutor:
    """The whole model in this process."""

    is_driver = True

    def __init__(self, worker: ModelWorker) -> None:
        self.worker = worker

    @property
    def model(self) -> torch.nn.Module:
        return self.worker.model

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        return self.worker.forward(rows)

    def close(self) -> None:
        pass
