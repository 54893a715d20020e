"""Tensor and expert parallelism over torch.distributed (Gloo on CPU, NCCL on CUDA).

``multiprocess.py`` starts worker processes (``worker.py``) from this process; ``torchrun.py``
joins processes that torchrun started; both run ``rank.py`` on every rank.
"""

from __future__ import annotations

from pathlib import Path

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.distributed.multiprocess import MultiprocessExecutor
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup
from vibe_sgl_lite.distributed.torchrun import TorchrunExecutor, launched_by_torchrun
from vibe_sgl_lite.kernels.attention import AttentionBackend


def start_parallel_executor(
    model_path: str | Path, config: EngineConfig, num_pages: int, attention: AttentionBackend
) -> MultiprocessExecutor | TorchrunExecutor:
    """Under ``torchrun``, join its processes; otherwise start ``world_size`` workers."""
    if launched_by_torchrun():
        return TorchrunExecutor(model_path, config, num_pages, attention)
    return MultiprocessExecutor(model_path, config, num_pages, attention)


__all__ = [
    "MultiprocessExecutor",
    "ParallelConfig",
    "ParallelGroup",
    "TorchrunExecutor",
    "start_parallel_executor",
]
