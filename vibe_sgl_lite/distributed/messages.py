"""The messages between the engine and its ranks: one small frozen dataclass per kind.

    engine -> rank 0        Forward(rows)            run one step on these rows
                            Profile()                every rank: send your Timeline
                            Stop()                   leave the serve loop (EOF counts as Stop)
    every rank -> engine    Ready()                  its shard is loaded
                            WorkerError(traceback)   it failed; the engine quotes the text
                            Timeline(rank, steps)    its micro-batch spans (answers Profile)
    output rank -> engine   Logits(array)            the step's float32 logits (rank 0, or
                                                     the first rank of the last pipeline stage)

Rank 0 broadcasts what it reads (``Forward`` or ``Stop``) to the other ranks, so under torchrun,
where rank 0 is the engine itself, the same two messages drive every rank. A receiver
dispatches on the type (``match`` / ``isinstance``), never on a string, so a misspelt kind is a
``NameError`` at the sender, not a message nobody answers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.distributed.pipeline_parallel import StepTimes


@dataclass(frozen=True)
class Forward:
    """One step: every rank runs its shard on ``rows``; rank 0 answers with ``Logits``."""

    rows: tuple[BatchRow, ...]


@dataclass(frozen=True)
class Profile:
    """Every rank answers with its ``Timeline`` of the steps since the last ``Profile``."""


@dataclass(frozen=True)
class Stop:
    """Leave the serve loop; the worker process then exits."""


@dataclass(frozen=True)
class Ready:
    """This rank joined the group and loaded its shard."""


@dataclass(frozen=True)
class Logits:
    """``[num sampling rows, vocab]`` float32, as a numpy array, which pickles as its bytes: a
    torch tensor sent over a ``multiprocessing`` connection goes through torch's shared-memory
    reductions instead, made for processes that ``multiprocessing`` itself started."""

    array: npt.NDArray[np.float32]


@dataclass(frozen=True)
class Timeline:
    """Rank ``rank``'s record of the steps since the last ``Profile``: for each, one
    ``(start, end)`` per micro-batch (``pipeline_parallel.StepTimes``)."""

    rank: int
    steps: tuple[StepTimes, ...]


@dataclass(frozen=True)
class WorkerError:
    """A rank failed: the formatted ``traceback`` of its exception, quoted in the engine's error."""

    traceback: str


ToRank = Forward | Profile | Stop
FromRank = Ready | Logits | Timeline | WorkerError
