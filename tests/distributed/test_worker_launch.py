"""Workers start from the package's own entry point, so ``tp_size=2`` works however Python runs.

multiprocessing's ``spawn`` re-imported the user's main module in every worker: a script without
an ``if __name__ == "__main__":`` guard, or code piped to ``python -``, could not use TP. These
tests run the same few lines each way and compare with one process; others check that a worker
that fails says why (its traceback, or its stderr when it dies before it can talk) and that no
worker outlives its engine.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vibe_sgl_lite import ModelRunner, SamplingParams

pytestmark = [pytest.mark.distributed, pytest.mark.slow]  # worker processes each

PROMPT = [5, 6, 7, 8, 9]
MAX_TOKENS = 8
WORKER_MODULE = "vibe_sgl_lite.distributed.worker"

# No main guard, no close(): the way a quick script, a REPL session or a notebook cell is written.
DRIVER = """\
from vibe_sgl_lite import ModelRunner, SamplingParams
runner = ModelRunner({model!r}, tp_size=2, max_total_tokens=256, page_size=4)
params = SamplingParams(temperature=0, max_tokens={n}, ignore_eos=True)
out = runner.generate_outputs([{prompt!r}], params)
print("TOKENS", *out[0].token_ids, flush=True)
"""

# What ipykernel does to a cell: ``__main__`` is a module with no ``__file__``, the code is
# compiled from a pseudo file name, and sys.stdout / sys.stderr have no file descriptor.
NOTEBOOK = """\
import io, sys, types
sys.modules["__main__"] = types.ModuleType("__main__")
real_stdout = sys.stdout
sys.stdout = sys.stderr = io.StringIO()
exec(compile({cell!r}, "<ipython-input-1>", "exec"), sys.modules["__main__"].__dict__)
real_stdout.write(sys.stdout.getvalue())
"""


@pytest.fixture(scope="module")
def expected_tokens(qwen3_dir: Path) -> list[int]:
    with ModelRunner(qwen3_dir, max_total_tokens=256, page_size=4) as runner:
        params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS, ignore_eos=True)
        return runner.generate_outputs([PROMPT], params)[0].token_ids


def tokens_printed(stdout: str) -> list[int]:
    lines = [line for line in stdout.splitlines() if "TOKENS" in line]
    assert len(lines) == 1, stdout
    return [int(t) for t in lines[0].split("TOKENS", 1)[1].split()]


def worker_children() -> list[int]:
    """Live worker processes whose parent is this process (zombies do not count)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        state, ppid = fields[0], int(fields[1])
        if ppid == os.getpid() and state not in "ZX" and WORKER_MODULE.encode() in cmdline:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    """True while ``pid`` runs; an exited child not reaped yet (a zombie) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.mark.parametrize("how", ["script", "-c", "stdin", "interactive", "notebook"])
def test_tp2_without_main_guard_matches_one_process(
    how: str, qwen3_dir: Path, tmp_path: Path, expected_tokens: list[int]
) -> None:
    code = DRIVER.format(model=str(qwen3_dir), prompt=PROMPT, n=MAX_TOKENS)
    stdin = None
    if how == "script":
        script = tmp_path / "generate_tp2.py"
        script.write_text(code)
        argv = [sys.executable, str(script)]
    elif how == "-c":
        argv = [sys.executable, "-c", code]
    elif how == "stdin":
        argv, stdin = [sys.executable, "-"], code
    elif how == "interactive":
        argv, stdin = [sys.executable, "-i"], code
    else:
        argv = [sys.executable, "-c", NOTEBOOK.format(cell=code)]
    proc = subprocess.run(
        argv, input=stdin, capture_output=True, text=True, timeout=180, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert tokens_printed(proc.stdout) == expected_tokens


def test_worker_exception_is_reported_with_its_traceback(qwen3_dir: Path, tmp_path: Path) -> None:
    """The engine reads only config.json and the tokenizer; the workers find the weights cut off
    halfway. The error names the rank and carries the worker's own traceback."""
    model_dir = tmp_path / "truncated"
    shutil.copytree(qwen3_dir, model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(RuntimeError) as info:
        ModelRunner(model_dir, tp_size=2, max_total_tokens=256)
    message = str(info.value)
    assert re.search(r"worker rank \d failed:\nTraceback \(most recent call last\)", message)
    assert "load_model" in message and "safetensors" in message.lower()
    assert worker_children() == []


def test_failure_on_one_rank_only_is_that_ranks_traceback(qwen3_dir: Path, tmp_path: Path) -> None:
    """The embedding has fewer rows than ``vocab_size``: rank 0's half of the vocabulary loads,
    rank 1's does not. The runner must not come up with a dead rank 1, and the error is rank 1's
    own traceback (rank 0 never failed)."""
    from safetensors.torch import load_file, save_file

    model_dir = tmp_path / "short_embedding"
    shutil.copytree(qwen3_dir, model_dir)
    weights = model_dir / "model.safetensors"
    tensors = load_file(weights)
    embed = tensors["model.embed_tokens.weight"]
    tensors["model.embed_tokens.weight"] = embed[: embed.shape[0] - 8].clone()
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(RuntimeError) as info:
        ModelRunner(model_dir, tp_size=2, max_total_tokens=256)
    message = str(info.value)
    assert message.startswith("worker rank 1 failed:\nTraceback (most recent call last)")
    assert "too small for the shard" in message and "worker rank 0" not in message
    assert worker_children() == []


def test_worker_that_dies_before_connecting_reports_its_stderr(
    qwen3_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker interpreter that cannot even start (this process is already running, so only
    the workers see the bad PYTHONHOME) can say why only on stderr: the error quotes it."""
    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no-python-here"))
    with pytest.raises(RuntimeError, match=r"worker rank \d exited unexpectedly") as info:
        ModelRunner(qwen3_dir, tp_size=2, max_total_tokens=256)
    message = str(info.value)
    assert "Fatal Python error" in message and "no-python-here" in message
    assert worker_children() == []


def test_workers_exit_when_the_engine_process_is_killed(qwen3_dir: Path, tmp_path: Path) -> None:
    """No close(), no atexit: the workers see EOF on their connection and leave."""
    code = DRIVER.format(model=str(qwen3_dir), prompt=PROMPT, n=2) + (
        "print('PIDS', *[p.pid for p in runner.engine.executor.procs], flush=True)\n"
        "import time; time.sleep(300)\n"
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )
    try:
        assert driver.stdout is not None
        pids: list[int] = []
        for line in driver.stdout:
            if line.startswith("PIDS"):
                pids = [int(p) for p in line.split()[1:]]
                break
        assert len(pids) == 2
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.time() + 30
        while time.time() < deadline and any(alive(pid) for pid in pids):
            time.sleep(0.2)
        assert not any(alive(pid) for pid in pids)
    finally:
        driver.kill()
        driver.wait()


def test_attention_backend_from_main_module_is_refused_before_any_worker_starts(
    qwen3_dir: Path,
) -> None:
    """Workers never import the user's ``__main__``, so a backend class defined there could not
    be unpickled in them: say so up front instead of in a worker's AttributeError."""
    from vibe_sgl_lite.kernels.attention import TorchPagedAttention

    class ScriptAttention(TorchPagedAttention):
        pass

    ScriptAttention.__module__ = "__main__"  # as if defined in the user's script or notebook
    with pytest.raises(ValueError, match="importable module"):
        ModelRunner(qwen3_dir, tp_size=2, max_total_tokens=256, attention_backend=ScriptAttention())
    assert worker_children() == []
