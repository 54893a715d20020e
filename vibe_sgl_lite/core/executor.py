"""Executors: where the forward pass runs, behind one small interface.

The engine hands an executor the rows of one step (``BatchRow``s: plain token ids, positions and
page tables) and gets back the logits of the rows that sample. A ``ModelWorker`` runs the model
in this process (``LocalExecutor``); ``distributed/`` runs one worker per rank (tensor and expert
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


LocalExecutor = ModelWorker
"""The whole model in this process: a ``ModelWorker`` is an executor itself (``execute``,
``close``, ``is_driver``), so a step on one process makes no extra hop."""
