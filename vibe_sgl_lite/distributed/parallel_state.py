"""Process groups for tensor and expert parallelism, passed to layers as arguments.

Nothing here is a module-level global: a layer that communicates holds the ``ParallelGroup``
it was given when the model was sharded, so two engines in one process never share state.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelGroup:
    """One communicator: this process's ``rank`` among ``size`` peers."""

    rank: int = 0
    size: int = 1
    group: Any = None  # a torch.distributed ProcessGroup; None when size == 1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum ``x`` over the group, in place."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        """Concatenate every rank's ``x`` along ``dim`` (rank order)."""
        if self.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim)


SINGLE = ParallelGroup()


@dataclass(frozen=True)
class ParallelConfig:
    """How one rank's model is split: attention/MLP over ``tp``, experts over ``ep``."""

    tp: ParallelGroup = SINGLE
    ep: ParallelGroup = SINGLE


def split_evenly(total: int, parts: int, index: int) -> tuple[int, int]:
    """``(start, length)`` of part ``index`` when ``total`` items are split into ``parts``."""
    if total % parts:
        raise ValueError(f"cannot split {total} evenly over {parts} ranks")
    size = total // parts
    return index * size, size


def find_free_port() -> int:
    """A TCP port that is free now, chosen by the OS: two engines never pick the same one."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
