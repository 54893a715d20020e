"""The worker process: ``python -m vibe_sgl_lite.distributed.worker FD``.

``MultiprocessExecutor`` starts one per rank with ``subprocess``. Because the process runs this
module, not the user's ``__main__``, a script without an ``if __name__ == "__main__":`` guard,
``python -c``, a REPL or a notebook all start the same workers (``spawn`` would re-run the
user's script in every worker). ``FD`` is this process's end of a socket pair; over it go
(message types from ``messages.py``):

    engine -> worker   the engine's ``sys.path``, then ``WorkerArgs`` (pickled)
    worker -> engine   ``Ready()`` once loaded, ``WorkerError(traceback)`` if anything fails
    rank 0             ``Forward(rows)`` / ``Profile()`` / ``Stop()`` in
    the output rank    ``Logits(array)`` out (rank 0, or the last pipeline stage's first rank)
    every rank         ``Timeline`` out, answering ``Profile``

A failure before the connection works (bad interpreter, an import error) can only go to
stderr, which the engine captures and quotes in its error.
"""

from __future__ import annotations

import os
import sys
import traceback
from datetime import timedelta
from multiprocessing.connection import Connection

import torch
import torch.distributed as dist

from vibe_sgl_lite.distributed.messages import Ready, WorkerError
from vibe_sgl_lite.distributed.rank import WorkerArgs, output_rank, rank_worker, serve

USAGE = "usage: python -m vibe_sgl_lite.distributed.worker FD  (MultiprocessExecutor starts it)"


def run(args: WorkerArgs, conn: Connection) -> None:
    """Join the group, load this rank's shard, send ``Ready``, serve until ``Stop``."""
    torch.set_num_threads(args.num_threads)
    cuda = args.spec.config.device.startswith("cuda")
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=args.world_size,
        timeout=timedelta(seconds=120),
    )
    try:
        stage = rank_worker(args.spec, args.rank, args.world_size)
        conn.send(Ready())
        answers = args.rank == output_rank(args.spec.config)
        serve(stage, conn, drives=args.rank == 0, answers=answers)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    """Connect to the engine, then ``run``; any exception goes back as ``WorkerError``, exit
    status 1."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print(USAGE, file=sys.stderr)
        return 2
    fd = int(argv[0])
    os.set_inheritable(fd, False)  # a process this one starts must not keep the engine's socket
    conn = Connection(fd)
    try:
        # The engine's import path, as ``spawn`` would give it: a custom attention backend
        # importable there unpickles here.
        engine_path: list[str] = conn.recv()
        sys.path[:0] = [p for p in engine_path if p not in sys.path]
        run(conn.recv(), conn)
    except BaseException:
        try:
            conn.send(WorkerError(traceback.format_exc()))
        except OSError:  # the engine is gone: stderr is all that is left
            raise
        return 1
    finally:
        conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
