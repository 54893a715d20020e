"""What one rank runs, however it was started: its part of the model and the serve loop.

Both launches share this module: ``worker.py`` (a process that ``MultiprocessExecutor`` started)
and ``torchrun.py`` (a process that torchrun started). Rank 0 reads ``Forward`` or ``Stop``
from the engine and broadcasts it; the output rank (``output_rank``) answers ``Logits`` (the
messages: ``messages.py``).

Ranks are laid out stage-major: rank ``r`` is tensor-parallel rank ``r % stage_size`` of
pipeline stage ``r // stage_size``; with ``pp_size = 1`` there is one stage of every rank.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.distributed.messages import Forward, Logits, Profile, Stop, Timeline, ToRank
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig, ParallelGroup
from vibe_sgl_lite.distributed.pipeline_parallel import StagePlan, cut_to_stage, plan_stage
from vibe_sgl_lite.distributed.stage import RankStage
from vibe_sgl_lite.distributed.tensor_parallel import shard_model
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.decoder import DecoderForCausalLM
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


def output_rank(config: EngineConfig) -> int:
    """The rank that sends each step's logits: the first rank of the last pipeline stage."""
    return (config.pp_size - 1) * config.stage_size


def parallel_config(config: EngineConfig, rank: int) -> ParallelConfig:
    """This rank's groups: its stage's ranks, used for TP, EP or both (the world group when
    there is one stage). Every rank creates every stage's group, in the same order, as
    ``new_group`` requires."""
    n = config.stage_size
    group: object = dist.group.WORLD
    if config.pp_size > 1 and n > 1:
        groups = [dist.new_group(list(range(s * n, (s + 1) * n))) for s in range(config.pp_size)]
        group = groups[rank // n]
    mine = ParallelGroup(rank % n, n, group)
    single = ParallelGroup()
    return ParallelConfig(
        tp=mine if config.tp_size > 1 else single,
        ep=mine if config.ep_size > 1 else single,
    )


def cut_rank(model: DecoderForCausalLM, stage: StagePlan, parallel: ParallelConfig) -> None:
    """Keep this rank's part of ``model``: its stage's layers, then its TP/EP shard of them."""
    cut_to_stage(model, stage)
    shard_model(model, parallel)


def rank_worker(spec: WorkerSpec, rank: int, size: int) -> RankStage:
    """What one rank holds: its shard of its stage's layers, a KV pool of those layers' KV heads
    (of this rank's share), and its neighbours in the pipeline."""
    config = spec.config
    cuda = config.device.startswith("cuda")
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")
    num_layers = ModelConfig.from_path(spec.model_path).num_hidden_layers
    n = config.stage_size
    stage = plan_stage(num_layers, config.pp_size, rank // n)
    parallel = parallel_config(config, rank)
    shard = functools.partial(cut_rank, stage=stage, parallel=parallel)
    worker = ModelWorker(spec, shard=shard, device=device)
    prev_rank = None if stage.is_first else rank - n
    next_rank = None if stage.is_last else rank + n
    return RankStage(worker, stage, prev_rank, next_rank, config.torch_dtype)


def serve(stage: RankStage, conn: Connection | None, *, drives: bool, answers: bool) -> None:
    """The rank loop: the driving rank (0) takes each step's rows from ``conn`` (the engine) and
    broadcasts them; every rank runs its stage; the answering rank (``output_rank``) sends the
    logits back. ``Profile`` makes every rank with a ``conn`` send its ``Timeline``. Ends on
    ``Stop``.

    ``conn`` is None on torchrun ranks, which only follow rank 0. An engine that went away (EOF
    on ``conn``) counts as ``Stop``, so that rank 0 still releases the other ranks and nobody is
    left blocked in a broadcast.
    """
    while True:
        message: list[ToRank | None] = [None]
        if drives and conn is not None:
            try:
                message[0] = conn.recv()
            except EOFError:
                message[0] = Stop()
        dist.broadcast_object_list(message, src=0)
        match message[0]:
            case Stop():
                return
            case Forward(rows):
                logits = stage.forward(rows)
                if answers and conn is not None:
                    assert logits is not None
                    conn.send(Logits(logits.cpu().numpy()))
            case Profile():
                if conn is not None:
                    conn.send(Timeline(dist.get_rank(), tuple(stage.take_timeline())))
            case other:
                raise TypeError(f"rank {dist.get_rank()}: unexpected message {other!r}")
