"""Run the model over worker processes that this process starts: TP, EP and PP.

    your process (Engine: scheduler, allocator, sampler)     MultiprocessExecutor
        │ one socket pair per rank: rank 0's carries Forward(rows) ──►, the output rank's
        │ ◄── Logits (rank 0, or the last pipeline stage's first rank); every rank's carries
        │ its WorkerArgs in and Ready / WorkerError out (messages.py)
        ▼
    python -m vibe_sgl_lite.distributed.worker  rank 0 ──broadcast rows──► rank 1 ... N-1
        TP: each rank its shard of every layer + a KV pool with only its KV heads;
            all-reduce after row-parallel layers, all-gather of the LM head's vocab slices
        PP: each stage its layers + a KV pool of only those; hidden states stage to stage

Workers are started with ``subprocess`` running the package's own entry point (``worker.py``),
not with multiprocessing's ``spawn``, which re-imports the user's main module in every worker:
a script without an ``if __name__ == "__main__":`` guard would start its workers recursively,
and ``python -`` has no file to re-import. So the launch works the same from a script,
``python -c``, a REPL or a notebook. The arguments travel pickled over the socket pair, whose
worker end is inherited through ``pass_fds``: no port, no file name, nothing to collide between
two runners (the process group itself uses a free port chosen at run time).

Workers stop on ``close()``, at interpreter exit (``weakref.finalize``) and when this process
goes away (EOF on their socket). A worker that dies makes ``execute`` raise ``RuntimeError``
instead of hanging; the error carries the worker's traceback, or, if it died before it could
talk, the end of its stderr (which is also copied to this process's stderr as it comes).
"""

from __future__ import annotations

import os
import signal
import site
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.distributed.messages import (
    Forward,
    FromRank,
    Logits,
    Profile,
    Ready,
    Stop,
    Timeline,
    ToRank,
    WorkerError,
)
from vibe_sgl_lite.distributed.parallel_state import find_free_port
from vibe_sgl_lite.distributed.pipeline_parallel import StepTimes, stage_layers
from vibe_sgl_lite.distributed.rank import WorkerArgs, output_rank
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.worker import WorkerSpec

WORKER_MODULE = "vibe_sgl_lite.distributed.worker"
READY_TIMEOUT_S = 300.0
STOP_TIMEOUT_S = 10.0
FAILED_STOP_TIMEOUT_S = 2.0
EXIT_WAIT_S = 5.0
POLL_S = 0.05
STDERR_TAIL_LINES = 40


def worker_env() -> dict[str, str]:
    """This process's environment, plus the folder that holds this package at the end of
    ``PYTHONPATH`` when it is not a site-packages folder: a checkout used without installing
    still resolves ``-m vibe_sgl_lite...`` in the worker. Site folders are left alone, since
    putting them on ``PYTHONPATH`` would move them ahead of the standard library."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    site_dirs = {str(Path(p).resolve()) for p in site.getsitepackages()}
    site_dirs.add(str(Path(site.getusersitepackages()).resolve()))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in site_dirs and root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([*paths, root])
    return env


class WorkerProcess:
    """One rank's process as the engine sees it: ``pid`` and ``is_alive()`` (as multiprocessing's
    processes have), its connection, and the last lines of its stderr for error messages."""

    def __init__(self, rank: int, env: dict[str, str]) -> None:
        self.rank = rank
        ours, theirs = socket.socketpair()
        try:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker holds the only copy: its exit is EOF here
        self.conn = Connection(ours.detach())
        self.stderr_tail: deque[str] = deque(maxlen=STDERR_TAIL_LINES)
        self._reader = threading.Thread(
            target=self._copy_stderr, name=f"vibe-sgl-lite-rank{rank}-stderr", daemon=True
        )
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def exitcode(self) -> int | None:
        return self.popen.poll()

    def is_alive(self) -> bool:
        return self.popen.poll() is None

    def _copy_stderr(self) -> None:
        """Pass the worker's stderr on (its warnings stay visible) and keep the last lines: the
        only account of a worker that dies before its connection works."""
        assert self.popen.stderr is not None
        for raw in self.popen.stderr:
            line = raw.decode(errors="replace")
            self.stderr_tail.append(line)
            try:
                sys.stderr.write(line)
            except (AttributeError, OSError, ValueError):  # no usable stderr here; keep draining
                pass

    def describe_exit(self) -> str:
        """Why this worker stopped talking: its exit code and the end of its stderr."""
        try:
            code: int | None = self.popen.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            code = None
        self._reader.join(timeout=EXIT_WAIT_S)  # the last lines, written just before exit
        if code is None:
            message = f"worker rank {self.rank} closed its connection unexpectedly"
        else:
            message = f"worker rank {self.rank} exited unexpectedly ({_exit_status(code)})"
        tail = "".join(self.stderr_tail).rstrip()
        return f"{message}; the end of its stderr:\n{tail}" if tail else message

    def stop(self, deadline: float) -> None:
        """Wait for the exit that ``Stop`` asked for; terminate, then kill, a late one."""
        try:
            self.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._reader.join(timeout=EXIT_WAIT_S)
        if not self._reader.is_alive() and self.popen.stderr is not None:
            self.popen.stderr.close()


class MultiprocessExecutor:
    """``ModelExecutor`` over ``world_size`` worker processes (see the module docstring)."""

    is_driver = True

    def __init__(self, spec: WorkerSpec) -> None:
        attention, config = spec.attention, spec.config
        if not sys.executable:
            raise RuntimeError("cannot start worker processes: sys.executable is not set")
        if type(attention).__module__ == "__main__":
            raise ValueError(
                f"attention backend {type(attention).__name__} is defined in __main__, which "
                "worker processes never import: define it in an importable module to use it with "
                "tp_size/ep_size/pp_size > 1"
            )
        # pp_size beyond the model's layers: refused here, before any worker starts.
        stage_layers(ModelConfig.from_path(spec.model_path).num_hidden_layers, config.pp_size, 0)
        self.world_size = config.world_size
        self.output_rank = output_rank(config)
        self.procs: list[WorkerProcess] = []
        self._pending: deque[tuple[WorkerProcess, FromRank]] = deque()
        self._finalizer = weakref.finalize(self, _shutdown, self.procs)
        port = find_free_port()
        threads = config.threads_per_rank
        try:
            env = worker_env()
            for rank in range(self.world_size):
                self.procs.append(WorkerProcess(rank, env))
            for proc in self.procs:
                args = WorkerArgs(spec, proc.rank, self.world_size, port, threads)
                self._send(proc, list(sys.path))
                self._send(proc, args)
            self._wait_ready(time.monotonic() + READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        if not self._finalizer.alive:
            raise RuntimeError("the parallel executor is closed")
        try:
            self._send(self.procs[0], Forward(tuple(rows)))
            proc, message = self._next_message(deadline=None)
        except BaseException:
            # Interrupted (Ctrl-C in a REPL or notebook) with logits still on their way: the next
            # step would read them as its own. Stop the workers instead.
            self.close()
            raise
        if proc.rank != self.output_rank or not isinstance(message, Logits):
            raise self._unexpected(proc, message)
        return torch.from_numpy(message.array)

    def take_timeline(self) -> list[list[StepTimes]]:
        """Every rank's record of the steps since the last call (``[rank][step]``: its
        micro-batch spans), for ``pipeline_parallel.bubble_share``; the records start over."""
        if not self._finalizer.alive:
            raise RuntimeError("the parallel executor is closed")
        self._send(self.procs[0], Profile())
        timelines: dict[int, list[StepTimes]] = {}
        while len(timelines) < self.world_size:
            proc, message = self._next_message(deadline=None)
            if not isinstance(message, Timeline):
                raise self._unexpected(proc, message)
            timelines[message.rank] = list(message.steps)
        return [timelines[rank] for rank in range(self.world_size)]

    def close(self) -> None:
        self._finalizer()

    def _send(self, proc: WorkerProcess, message: list[str] | WorkerArgs | ToRank) -> None:
        try:
            proc.conn.send(message)
        except OSError:
            raise self._fail(proc.describe_exit()) from None

    def _wait_ready(self, deadline: float) -> None:
        """Every rank must load its shard: a failure on any rank is reported, not only rank 0."""
        waiting = {proc.rank for proc in self.procs}
        while waiting:
            proc, message = self._next_message(deadline)
            if not isinstance(message, Ready):
                raise self._unexpected(proc, message)
            waiting.discard(proc.rank)

    def _next_message(self, deadline: float | None) -> tuple[WorkerProcess, FromRank]:
        """The next message from any rank; raise if a rank failed, died or, with a deadline,
        took too long. All failures seen at once go into one error, root cause included (a
        ``WorkerError`` is a failure, never returned)."""
        while not self._pending:
            ready = wait([proc.conn for proc in self.procs], timeout=POLL_S)
            failures = []
            for proc in self.procs:
                if proc.conn not in ready:
                    if not proc.is_alive() and not proc.conn.poll():
                        failures.append(proc.describe_exit())
                    continue
                try:
                    message = proc.conn.recv()
                except (EOFError, OSError):
                    failures.append(proc.describe_exit())
                    continue
                if isinstance(message, WorkerError):
                    failures.append(f"worker rank {proc.rank} failed:\n{message.traceback}")
                else:
                    self._pending.append((proc, message))
            if failures:
                raise self._fail("\n".join(failures))
            if deadline is not None and time.monotonic() > deadline:
                raise self._fail(f"workers did not answer within {READY_TIMEOUT_S:.0f} s")
        return self._pending.popleft()

    def _unexpected(self, proc: WorkerProcess, message: FromRank) -> RuntimeError:
        """A message out of turn (named by its type: a ``Logits`` array is no use in an error)."""
        return self._fail(
            f"unexpected {type(message).__name__} message from worker rank {proc.rank}"
        )

    def _fail(self, message: str) -> RuntimeError:
        """Stop every worker (a half-dead group is of no use) and build the error to raise.

        The survivors get a short grace period only: one still waiting for a dead peer (in the
        rendezvous, say) would otherwise hold ``close()`` for the full stop timeout."""
        if self._finalizer.detach() is not None:
            _shutdown(self.procs, timeout_s=FAILED_STOP_TIMEOUT_S)
        return RuntimeError(message)


def _exit_status(code: int) -> str:
    """``-9`` means SIGKILL (a kill, or the out-of-memory killer): say so."""
    if code >= 0:
        return f"exit code {code}"
    try:
        return f"killed by {signal.Signals(-code).name}"
    except ValueError:
        return f"killed by signal {-code}"


def _shutdown(procs: list[WorkerProcess], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Ask the workers to stop, then make sure they did: no orphan processes.

    Closing every connection right after ``Stop`` is safe (the message stays buffered) and
    releases a worker still starting: it reads EOF instead of waiting for its arguments."""
    if procs:
        try:
            procs[0].conn.send(Stop())
        except (OSError, ValueError):
            pass
    for proc in procs:
        proc.conn.close()
    deadline = time.monotonic() + timeout_s
    for proc in procs:
        proc.stop(deadline)
