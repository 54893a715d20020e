"""The README's Python examples run as written (on the bundled model)."""

from __future__ import annotations

import argparse
import ast
import importlib.util
import inspect
import re
import shlex
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert python_blocks()


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_readme_python_example_runs(index: int, capsys: pytest.CaptureFixture[str]) -> None:
    exec(compile(python_blocks()[index], f"README block {index}", "exec"), {})
    assert capsys.readouterr().out.strip()


def test_readme_cli_sample_is_what_the_command_prints(capsys: pytest.CaptureFixture[str]) -> None:
    """The sample is greedy: sampled text can differ on another CPU (the README says why)."""
    from vibe_sgl_lite.cli import main

    command, shown = re.findall(r"```\n\$ (vibe-sgl-lite generate .*?)\n(.*?)```", _text(), re.S)[0]
    argv = shlex.split(command)[1:]
    assert "--temperature" in argv and argv[argv.index("--temperature") + 1] == "0"
    assert main(argv) == 0
    assert capsys.readouterr().out.rstrip("\n") == shown.rstrip("\n")


def test_readme_model_runner_signature_lists_every_setting() -> None:
    """The ``ModelRunner(...)`` line shows every keyword with its default, as ``inspect`` does."""
    from vibe_sgl_lite import ModelRunner

    line = re.search(r"\* `ModelRunner\((model_path, \*, .*?)\)`;", _text(), re.S)
    assert line is not None
    shown = dict(re.findall(r"(\w+)=(\(\)|[^,\s]+)", line.group(1)))
    expected = {
        name: param.default
        for name, param in inspect.signature(ModelRunner).parameters.items()
        if name != "model_path"
    }
    assert {name: ast.literal_eval(value) for name, value in shown.items()} == expected


def test_readme_names_every_serve_flag() -> None:
    from vibe_sgl_lite.cli import build_parser

    parser, engine_dests, _ = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    serve = commands.choices["serve"]
    own = [a.option_strings[0] for a in serve._actions if a.dest not in engine_dests]
    section = _text().split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert [flag for flag in own if flag not in ("-h", "--model") and flag not in section] == []


def _text() -> str:
    return README.read_text()


def test_readme_performance_table_is_the_benchmarks_summary() -> None:
    """``scripts/sync_benchmarks_summary.py`` regenerates the README's table from
    ``docs/benchmarks.md``; a hand edit of either one alone fails here."""
    sync = _load_script("sync_benchmarks_summary")
    documented = sync.readme_links(sync.summary_block(sync.BENCHMARKS.read_text()))
    assert sync.summary_block(README.read_text()) == documented


def _load_script(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, README.parent / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
