"""Tensor, expert and pipeline parallelism over torch.distributed (Gloo on CPU, NCCL on CUDA).

``multiprocess.py`` starts worker processes (``worker.py``) from this process; ``torchrun.py``
joins processes that torchrun started; both run ``rank.py`` on every rank and talk in the
typed messages of ``messages.py``. Each rank runs a ``stage.RankStage``: its TP/EP shard
(``tensor_parallel.py``) of its pipeline stage's layers (``pipeline_parallel.py``).
"""

from __future__ import annotations

from vibe_sgl_lite.distributed.multiprocess import MultiprocessExecutor
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup
from vibe_sgl_lite.distributed.torchrun import TorchrunExecutor, launched_by_torchrun
from vibe_sgl_lite.models.worker import WorkerSpec


def start_parallel_executor(spec: WorkerSpec) -> MultiprocessExecutor | TorchrunExecutor:
    """Under ``torchrun``, join its processes; otherwise start ``world_size`` workers."""
    if launched_by_torchrun():
        return TorchrunExecutor(spec)
    return MultiprocessExecutor(spec)


__all__ = [
    "MultiprocessExecutor",
    "ParallelConfig",
    "ParallelGroup",
    "TorchrunExecutor",
    "start_parallel_executor",
]
