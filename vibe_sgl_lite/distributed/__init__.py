"""Tensor and expert parallelism over torch.distributed (Gloo on CPU, NCCL on CUDA)."""

from vibe_sgl_lite.distributed.executor import start_parallel_executor
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup

__all__ = ["ParallelConfig", "ParallelGroup", "start_parallel_executor"]
