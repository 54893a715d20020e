"""The command line, run in-process through ``main`` and as ``python -m vibe_sgl_lite``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.cli import main

pytestmark = pytest.mark.integration


def test_generate_prints_prompt_and_greedy_text(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(qwen3_dir), "Once upon a time", "--max-tokens", "8"]
    assert main(args + ["--temperature", "0", "--max-total-tokens", "256"]) == 0
    printed = capsys.readouterr().out
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        expected = runner.generate("Once upon a time", max_tokens=8, temperature=0)
    assert printed == "Once upon a time" + expected + "\n"


def test_batch_and_stats(qwen3_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", "--model", str(qwen3_dir), "a", "b", "--max-tokens", "3", "--stats"]
    assert main(args + ["--max-total-tokens", "256", "--ignore-eos"]) == 0
    out = capsys.readouterr().out
    assert '"num_generated_tokens": 6' in out


def test_bad_flag_value_is_a_clear_error(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(qwen3_dir), "hi", "--temperature", "-1"]
    assert main(args + ["--max-total-tokens", "256"]) == 2
    assert "temperature must be" in capsys.readouterr().err


def test_python_dash_m(qwen3_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vibe_sgl_lite",
            "generate",
            "--model",
            str(qwen3_dir),
            "hi",
            "--max-tokens",
            "2",
            "--max-total-tokens",
            "128",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("hi")
