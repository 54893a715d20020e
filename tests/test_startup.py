"""Start-up cost and process settings a user feels before the first token.

``vibe-sgl-lite --version`` and ``--help`` must not import torch, transformers, the server or
the kernels (seconds of imports for a line of text), and neither must ``import vibe_sgl_lite``:
the public names load with their first use. The thread count a runner picks, and the line that
announces the first build of the C++ kernel, are checked here too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.utils import threads

HEAVY = ("torch", "transformers", "fastapi", "uvicorn", "triton", "llguidance", "numpy")

PROBE = """
import json, sys
from vibe_sgl_lite.cli import main
try:
    main({argv!r})
except SystemExit:
    pass
sys.stdout.flush()
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)), file=sys.stderr)
"""


def _heavy_modules_after(argv: list[str]) -> list[str]:
    code = PROBE.format(argv=argv, heavy=HEAVY)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return json.loads(proc.stderr.strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["generate", "--help"], ["serve", "--help"], ["bench", "--help"]],
)
def test_version_and_help_import_nothing_heavy(argv: list[str]) -> None:
    assert _heavy_modules_after(argv) == []


def test_import_package_is_light_until_a_name_is_used() -> None:
    code = (
        "import sys, vibe_sgl_lite\n"
        "light = 'torch' not in sys.modules\n"
        "runner_class = vibe_sgl_lite.ModelRunner\n"
        "print(light, 'torch' in sys.modules, runner_class.__name__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out == ["True", "True", "ModelRunner"]


def test_num_threads_default_is_idle_physical_cores_unless_omp_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.2, 0.0, 0.0))
    assert EngineConfig().threads_per_rank == 4  # an idle machine: every physical core
    monkeypatch.setattr(os, "getloadavg", lambda: (2.6, 0.0, 0.0))
    assert EngineConfig().threads_per_rank == 1  # three cores busy: the one left
    monkeypatch.setattr(os, "getloadavg", lambda: (9.0, 0.0, 0.0))
    assert EngineConfig().threads_per_rank == 1  # never fewer than one
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert EngineConfig().threads_per_rank == 3
    assert EngineConfig(num_threads=5).threads_per_rank == 5
    assert EngineConfig(num_threads=5, tp_size=2).threads_per_rank == 2  # shared by the ranks


def test_physical_cores_counts_hyperthread_siblings_once(tmp_path: Path) -> None:
    cpus = sorted(os.sched_getaffinity(0))
    for cpu in cpus:  # every CPU paired with a sibling: cpu0 & cpu1 share a core, ...
        topology = tmp_path / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(f"{cpu // 2}\n")
    assert threads.physical_cores(tmp_path) == len({cpu // 2 for cpu in cpus})


@pytest.mark.parametrize("value", [0, -1, 1.5, "2"])
def test_bad_num_threads_names_the_field(value: object) -> None:
    with pytest.raises(ValueError, match="num_threads must be an integer >= 1"):
        EngineConfig(num_threads=value)  # type: ignore[arg-type]


def test_runner_sets_torch_threads(qwen3_dir: Path) -> None:
    import torch

    from vibe_sgl_lite import ModelRunner

    before = torch.get_num_threads()
    try:
        with ModelRunner(qwen3_dir, num_threads=2, max_total_tokens=64):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_threads_flag_reaches_the_engine_settings() -> None:
    from vibe_sgl_lite.cli import build_parser
    from vibe_sgl_lite.cli.flags import values_of

    parser, engine, _ = build_parser()
    for command in ("generate", "chat", "serve", "bench"):
        args = parser.parse_args([command, "--threads", "3"])
        assert values_of(args, engine)["num_threads"] == 3, command


def test_first_kernel_build_is_announced_on_stderr(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch.utils.cpp_extension as cpp_extension

    from vibe_sgl_lite.kernels import cpu_paged

    built: list[str] = []
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpp_extension, "load", lambda name, **kw: built.append(name))
    cpu_paged.build_kernel.__wrapped__()  # type: ignore[attr-defined]
    assert built and "compiling the C++ attention kernel" in capsys.readouterr().err
    so = tmp_path / built[0] / f"{built[0]}.so"
    so.parent.mkdir(parents=True, exist_ok=True)
    so.touch()
    cpu_paged.build_kernel.__wrapped__()  # type: ignore[attr-defined]
    assert capsys.readouterr().err == ""  # already built: silent
