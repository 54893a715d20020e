"""The README's Python examples run as written (on the bundled model)."""

from __future__ import annotations

import importlib.util
import re
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
