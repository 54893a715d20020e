"""Run the model sharded over worker processes: tensor and expert parallelism.

    main process (Engine: scheduler, allocator, sampler)
        │  Pipe: rows of one step ──►            ◄── logits of the sampling rows
        ▼
    worker rank 0 ──broadcast rows──► worker rank 1 ... rank N-1
        each rank: its shard of every layer + a KV pool with only its KV heads;
        all-reduce after row-parallel layers, all-gather of the LM head's vocab slices

The main process never joins the process group, so two runners in one process (or on one
machine) never collide: each picks a free port at run time. Workers are daemonic, started with
``spawn``, and stopped by ``close()``, at interpreter exit, or when the main process goes away
(their pipe closes). A worker that dies makes ``execute`` raise ``RuntimeError`` instead of
hanging.
"""

from __future__ import annotations

import functools
import os
import traceback
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.distributed.parallel_state import (
    ParallelConfig,
    ParallelGroup,
    find_free_port,
)
from vibe_sgl_lite.distributed.tensor_parallel import shard_model
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.models.worker import ModelWorker

READY_TIMEOUT_S = 300.0
POLL_S = 0.05


@dataclass
class WorkerArgs:
    rank: int
    world_size: int
    port: int
    model_path: str
    config: EngineConfig
    num_pages: int
    attention: AttentionBackend
    num_threads: int


def parallel_config(config: EngineConfig, rank: int, size: int) -> ParallelConfig:
    """This rank's groups: one world group, used for TP, EP or both."""
    group = ParallelGroup(rank, size, dist.group.WORLD)
    single = ParallelGroup()
    return ParallelConfig(
        tp=group if config.tp_size > 1 else single,
        ep=group if config.ep_size > 1 else single,
    )


def rank_worker(
    model_path: str,
    config: EngineConfig,
    num_pages: int,
    attention: AttentionBackend,
    rank: int,
    size: int,
) -> ModelWorker:
    """What one rank holds: its shard of the model and a KV pool of its KV heads."""
    cuda = config.device.startswith("cuda")
    device = torch.device(f"cuda:{rank % torch.cuda.device_count()}" if cuda else "cpu")
    parallel = parallel_config(config, rank, size)
    shard = functools.partial(shard_model, parallel=parallel)
    return ModelWorker(model_path, config, num_pages, attention, shard=shard, device=device)


def serve(shard: ModelWorker, conn: Connection | None) -> None:
    """The worker loop: rank 0 takes each step's rows from ``conn`` (the engine) and broadcasts
    them; every rank runs its shard; rank 0 sends the logits back. Ends on a "stop" message."""
    while True:
        message: list[Any] = [conn.recv() if conn is not None else None]
        dist.broadcast_object_list(message, src=0)
        kind, rows = message[0]
        if kind == "stop":
            return
        logits = shard.forward(rows)
        if conn is not None:
            conn.send(("logits", logits.cpu().numpy()))


def worker_main(args: WorkerArgs, conn: Connection | None) -> None:
    """Entry point of a spawned worker: join the group, load the shard, serve."""
    torch.set_num_threads(args.num_threads)
    cuda = args.config.device.startswith("cuda")
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        shard = rank_worker(
            args.model_path,
            args.config,
            args.num_pages,
            args.attention,
            args.rank,
            args.world_size,
        )
        if conn is not None:
            conn.send(("ready", None))
        serve(shard, conn)
    except EOFError:
        if conn is not None:  # the main process went away: tell the other ranks to stop
            dist.broadcast_object_list([("stop", None)], src=0)
    except BaseException:
        if conn is not None:
            conn.send(("error", traceback.format_exc()))
        raise
    finally:
        dist.destroy_process_group()


class MultiprocessExecutor:
    """``ModelExecutor`` over ``world_size`` worker processes (see the module docstring)."""

    is_driver = True

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        num_pages: int,
        attention: AttentionBackend,
    ) -> None:
        self.world_size = config.world_size
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        port = find_free_port()
        threads = max(1, (os.cpu_count() or 1) // self.world_size)
        self.procs: list[BaseProcess] = []
        for rank in range(self.world_size):
            args = WorkerArgs(
                rank, self.world_size, port, str(model_path), config, num_pages, attention, threads
            )
            proc = ctx.Process(
                target=worker_main,
                args=(args, child_conn if rank == 0 else None),
                daemon=True,
                name=f"vibe-sgl-lite-rank{rank}",
            )
            proc.start()
            self.procs.append(proc)
        child_conn.close()
        self._finalizer = weakref.finalize(self, _shutdown, self.conn, self.procs)
        self._receive("ready", timeout=READY_TIMEOUT_S)

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        self.conn.send(("forward", list(rows)))
        return torch.from_numpy(self._receive("logits"))

    def _receive(self, expected: str, timeout: float | None = None) -> Any:
        waited = 0.0
        while not self.conn.poll(POLL_S):
            dead = [(i, p.exitcode) for i, p in enumerate(self.procs) if not p.is_alive()]
            if dead:
                self.close()
                rank, code = dead[0]
                raise RuntimeError(f"worker rank {rank} exited unexpectedly (exit code {code})")
            waited += POLL_S
            if timeout is not None and waited > timeout:
                self.close()
                raise RuntimeError(f"workers did not answer within {timeout:.0f} s")
        try:
            kind, payload = self.conn.recv()
        except EOFError:
            self.close()
            raise RuntimeError("worker rank 0 closed its connection unexpectedly") from None
        if kind == "error":
            self.close()
            raise RuntimeError(f"a worker failed:\n{payload}")
        assert kind == expected, (kind, expected)
        return payload

    def close(self) -> None:
        self._finalizer()


def _shutdown(conn: Connection, procs: list[BaseProcess]) -> None:
    """Ask the workers to stop, then make sure they did: no orphan processes."""
    try:
        conn.send(("stop", None))
    except (OSError, ValueError):
        pass
    for proc in procs:
        proc.join(timeout=10)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
            proc.join(timeout=5)
    conn.close()


# ---- torchrun: the same code, one process per rank, possibly across machines ---------------


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


class TorchrunExecutor:
    """Under ``torchrun`` every process builds a ``ModelRunner``; rank 0 drives.

    Rank 0's executor broadcasts each step's rows to the other ranks and runs its own shard; the
    other ranks' ``ModelRunner`` constructors block in ``serve`` until rank 0 closes. The group
    comes from torchrun's environment (``MASTER_ADDR``/``MASTER_PORT``), so multi-node works.
    """

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        num_pages: int,
        attention: AttentionBackend,
    ) -> None:
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
        agreed: list[Any] = [num_pages]  # every rank must index the same pages
        dist.broadcast_object_list(agreed, src=0)
        self.shard = rank_worker(str(model_path), config, agreed[0], attention, self.rank, size)
        self.is_driver = self.rank == 0
        self._closed = False
        if not self.is_driver:
            serve(self.shard, None)
            self._leave_group()

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        dist.broadcast_object_list([("forward", list(rows))], src=0)
        return self.shard.forward(rows).cpu()

    def close(self) -> None:
        if not self._closed:
            dist.broadcast_object_list([("stop", None)], src=0)
            self._leave_group()

    def _leave_group(self) -> None:
        """Every rank leaves together: a rank exiting while Gloo threads still talk aborts."""
        dist.barrier()
        dist.destroy_process_group()
        self._closed = True


def start_parallel_executor(
    model_path: str | Path, config: EngineConfig, num_pages: int, attention: AttentionBackend
) -> MultiprocessExecutor | TorchrunExecutor:
    """Under ``torchrun``, join its processes; otherwise start ``world_size`` workers."""
    if launched_by_torchrun():
        return TorchrunExecutor(model_path, config, num_pages, attention)
    return MultiprocessExecutor(model_path, config, num_pages, attention)
