"""torchrun: the same code, one process per rank, possibly across machines."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.distributed.messages import Forward, Stop, ToRank
from vibe_sgl_lite.distributed.rank import rank_worker, serve
from vibe_sgl_lite.models.worker import WorkerSpec


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class TorchrunExecutor:
    """Under ``torchrun`` every process builds a ``ModelRunner``; rank 0 drives.

    Rank 0's executor broadcasts each step's rows to the other ranks and runs its own shard; the
    other ranks' ``ModelRunner`` constructors block in ``serve`` until rank 0 closes (rank 0
    broadcasts ``Forward`` and ``Stop``, as it does for worker processes). The group comes from
    torchrun's environment (``MASTER_ADDR``/``MASTER_PORT``), so multi-node works.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        config = spec.config
        if config.pp_size > 1:
            raise ValueError(
                f"pp_size={config.pp_size} is not supported under torchrun yet (its rank 0 drives "
                "the engine and must also produce the logits): use pp_size=1, or start the "
                "pipeline from one process without torchrun"
            )
        size = config.world_size
        if int(os.environ["WORLD_SIZE"]) != size:
            raise ValueError(
                f"torchrun started {os.environ['WORLD_SIZE']} processes but tp_size/ep_size need "
                f"{size}"
            )
        if not dist.is_initialized():
            cuda = config.device.startswith("cuda")
            dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        self.rank = dist.get_rank()
        agreed: list[Any] = [spec.num_pages]  # every rank must index the same pages
        dist.broadcast_object_list(agreed, src=0)
        spec = dataclasses.replace(spec, num_pages=agreed[0])
        self.stage = rank_worker(spec, self.rank, size)
        self.is_driver = self.rank == 0
        self._closed = False
        if not self.is_driver:
            serve(self.stage, None, drives=False, answers=False)
            self._leave_group()

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        self._broadcast(Forward(tuple(rows)))
        logits = self.stage.forward(rows)
        assert logits is not None  # one pipeline stage: every rank computes the logits
        return logits.cpu()

    def close(self) -> None:
        if not self._closed:
            self._broadcast(Stop())
            self._leave_group()

    def _broadcast(self, message: ToRank) -> None:
        dist.broadcast_object_list([message], src=0)

    def _leave_group(self) -> None:
        """Every rank leaves together: a rank exiting while Gloo threads still talk aborts."""
        dist.barrier()
        dist.destroy_process_group()
        self._closed = True
