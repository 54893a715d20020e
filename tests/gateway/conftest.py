"""Processes for the gateway tests: ``vibe-sgl-lite`` commands and SGLang's gateway (``smg``),
on loopback ports the kernel picked, stopped (and their children checked gone) at the end.

Without ``smg`` installed the tests that need it skip, except under CI (``CI`` set), where
``scripts/test.sh`` installs the ``router`` extra and a missing gateway is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest

from vibe_sgl_lite.gateway.data_parallel import free_port
from vibe_sgl_lite.gateway.supervisor import http_status

STARTUP_S = 240.0


def require_gateway() -> None:
    if importlib.util.find_spec("smg") is None and not os.environ.get("CI"):
        pytest.skip("SGLang's model gateway is not installed: pip install 'vibe-sgl-lite[router]'")


@dataclass
class Process:
    """A started command, its port, and where its output goes."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_answering(self, path: str, timeout_s: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout_s
        while http_status(self.base_url + path) != 200:
            assert self.proc.poll() is None, self.output()[-3000:]
            assert time.monotonic() < deadline, f"{path} not answering\n{self.output()[-3000:]}"
            time.sleep(0.2)

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key="none", max_retries=0)

    def children(self) -> list[int]:
        """The process's direct children, from /proc."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == self.proc.pid:
                    found.append(int(entry.name))
        return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pids: Sequence[int], timeout_s: float = 30.0) -> list[int]:
    """The pids still running after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (left := [p for p in pids if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@contextmanager
def launched(command: Sequence[str], tmp_path: Path, name: str) -> Iterator[Process]:
    """Run ``command`` (``{port}`` in it replaced by a free port) until the block ends; then
    SIGKILL it if it still runs, and its children with it."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    argv = [part.replace("{port}", str(port)) for part in command]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    process = Process(proc, port, log)
    try:
        yield process
    finally:
        if proc.poll() is None:
            kids = process.children()
            proc.kill()
            proc.wait()
            for pid in wait_gone(kids, 10):
                os.kill(pid, signal.SIGKILL)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "vibe_sgl_lite", *args]
