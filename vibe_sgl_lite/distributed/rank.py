"""What one rank runs, however it was started: its shard of the model and the serve loop.

Both launches share this module: ``worker.py`` (a process that ``MultiprocessExecutor`` started)
and ``torchrun.py`` (a process that torchrun started). Rank 0 reads ``Forward`` or ``Stop``
from the engine and broadcasts it; it answers ``Logits`` (the messages: ``messages.py``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.distributed.messages import Forward, Logits, Stop, ToRank
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup
from vibe_sgl_lite.distributed.tensor_parallel import shard_model
from vibe_sgl_lite.models.worker import ModelWorker, WorkerSpec


@dataclass(frozen=True)
class WorkerArgs:
    """Everything a worker process needs, sent pickled over its connection (never on the command
    line: the attention backend is an object, and a config could be long)."""

    spec: WorkerSpec
    rank: int
    world_size: int
    port: int
    num_threads: int


def parallel_config(config: EngineConfig, rank: int, size: int) -> ParallelConfig:
    """This rank's groups: one world group, used for TP, EP or both."""
    group = ParallelGroup(rank, size, dist.group.WORLD)
    single = ParallelGroup()
    return ParallelConfig(
        tp=group if config.tp_size > 1 else single,
        ep=group if config.ep_size > 1 else single,
    )


def rank_worker(spec: WorkerSpec, rank: int, size: int) -> ModelWorker:
    """What one rank holds: its shard of the model and a KV pool of its KV heads."""
    cuda = spec.config.device.startswith("cuda")
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")
    parallel = parallel_config(spec.config, rank, size)
    shard = functools.partial(shard_model, parallel=parallel)
    return ModelWorker(spec, shard=shard, device=device)


def serve(shard: ModelWorker, conn: Connection | None) -> None:
    """The rank loop: rank 0 takes each step's rows from ``conn`` (the engine) and broadcasts
    them; every rank runs its shard; rank 0 sends the logits back. Ends on ``Stop``.

    ``conn`` is None on the ranks that only follow rank 0. An engine that went away (EOF on
    ``conn``) counts as ``Stop``, so that rank 0 still releases the other ranks and nobody is left
    blocked in a broadcast.
    """
    while True:
        message: list[ToRank | None] = [None]
        if conn is not None:
            try:
                message[0] = conn.recv()
            except EOFError:
                message[0] = Stop()
        dist.broadcast_object_list(message, src=0)
        match message[0]:
            case Stop():
                return
            case Forward(rows):
                logits = shard.forward(rows)
                if conn is not None:
                    conn.send(Logits(logits.cpu().numpy()))
            case other:
                raise TypeError(f"rank {dist.get_rank()}: unexpected message {other!r}")
