"""Child processes that start, serve and stop together: the replicas and gateway of
``serve --dp-size N`` (``data_parallel.py``).

Three promises, each with its mechanism:

* **Ctrl-C or SIGTERM stops every process.** Children run in sessions of their own, so a
  terminal's Ctrl-C reaches the parent alone; the parent then stops them in order (the gateway
  first, so that it stops taking requests while the replicas finish theirs), each with SIGTERM,
  then SIGKILL past its grace period.
* **No process outlives the parent**, even one killed with SIGKILL (which no handler sees):
  each child asks the kernel, before it runs its program, for SIGTERM when its parent dies
  (Linux's ``PR_SET_PDEATHSIG``).
* **A child that dies is reported**, once, with its exit status; whether the others go on is
  the caller's choice (``Supervisor.run``'s ``keep_going``).

Readiness is an HTTP ``GET`` answered 200: a process that exits or stays silent past the
deadline is a ``RuntimeError`` naming it, and the caller stops the rest.
"""

from __future__ import annotations

import ctypes
import http.client
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

PR_SET_PDEATHSIG = 1
POLL_S = 0.2
SIGNALS = (signal.SIGINT, signal.SIGTERM)
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A ``preexec_fn``: SIGTERM this child when its parent dies; exit if that already happened."""

    def arm() -> None:
        if sys.platform.startswith("linux"):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return arm


@dataclass
class Child:
    """One supervised process: ``name`` for messages, ``url`` where it answers HTTP."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    stage: int = 0
    reported: bool = False

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


def http_status(url: str, timeout: float = 2.0) -> int | str:
    """``GET url``'s status, or why there was none (``"connection refused"``, ...)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path or "/")
        return conn.getresponse().status
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    finally:
        conn.close()


@dataclass
class Supervisor:
    """Starts children, waits for them to answer, runs until a signal, stops them all."""

    grace_s: float = 10.0
    children: list[Child] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _previous: dict[signal.Signals, Handler] = field(default_factory=dict)

    def start(
        self,
        name: str,
        url: str,
        command: Sequence[str],
        env: dict[str, str] | None = None,
        stage: int = 0,
    ) -> Child:
        """Start ``command``; ``stop`` stops the highest ``stage`` first."""
        process = subprocess.Popen(
            list(command),
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent(os.getpid()),
        )
        child = Child(name, url, process, stage)
        self.children.append(child)
        return child

    def wait_ready(self, child: Child, path: str, timeout_s: float) -> None:
        """Block until ``child`` answers ``GET path`` with 200; ``RuntimeError`` when it exits,
        when a stop is requested, or at the deadline."""
        deadline = time.monotonic() + timeout_s
        while (status := http_status(child.url + path)) != 200:
            if not child.alive:
                child.reported = True
                raise RuntimeError(
                    f"{child.name} exited with status {child.process.returncode} before it "
                    "was ready (its messages are above)"
                )
            if self._stop.is_set():
                raise KeyboardInterrupt  # a signal came while waiting: stop, exit status 0
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{child.name} did not answer GET {child.url}{path} within {timeout_s:g} s "
                    f"(last: {status})"
                )
            time.sleep(POLL_S)

    def request_stop(self, signum: int = signal.SIGTERM, frame: FrameType | None = None) -> None:
        self._stop.set()

    def run(self, keep_going: Callable[[list[Child]], bool]) -> int:
        """Serve until SIGINT/SIGTERM (0) or until ``keep_going(live children)`` is false after
        a child exits (1). Each exit is reported once on stderr."""
        while not self._stop.wait(POLL_S):
            died = [c for c in self.children if not c.alive and not c.reported]
            for child in died:
                child.reported = True
                print(
                    f"error: {child.name} ({child.url}) exited with status "
                    f"{child.process.returncode}",
                    file=sys.stderr,
                    flush=True,
                )
            if died and not keep_going([c for c in self.children if c.alive]):
                return 1
        return 0

    def stop(self) -> None:
        """Stop the children stage by stage, the highest first (the gateway before the
        replicas it routes to): SIGTERM to a stage's children at once, SIGKILL to those still
        running ``grace_s`` later."""
        for stage in sorted({c.stage for c in self.children}, reverse=True):
            group = [c for c in self.children if c.stage == stage and c.alive]
            for child in group:
                child.process.terminate()
            deadline = time.monotonic() + self.grace_s
            for child in group:
                try:
                    child.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.process.kill()
                    child.process.wait()

    def __enter__(self) -> Supervisor:
        """SIGINT and SIGTERM request a stop while the supervisor runs."""
        self._previous = {s: signal.signal(s, self.request_stop) for s in SIGNALS}
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop every child, whatever ended the block, and restore the signal handlers."""
        try:
            self.stop()
        finally:
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)
