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


def test_every_engine_setting_is_a_flag() -> None:
    from vibe_sgl_lite.cli import build_parser
    from vibe_sgl_lite.config import FIELDS

    parser, engine_dests, _ = build_parser()
    assert set(engine_dests.values()) == set(FIELDS)
    args = parser.parse_args(
        ["generate", "--mem-fraction", "0.5", "--tp-size", "2", "--ep-size", "2", "--stop", "a"]
    )
    assert (args.mem_fraction, args.tp_size, args.ep_size, args.stop) == (0.5, 2, 2, ["a"])


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--top-p", "2"], "top_p must be"),
        (["--device", "gpu"], "device must be 'cpu', 'cuda' or 'cuda:N'"),
        (["--mem-fraction", "0"], "mem_fraction must be"),
    ],
)
def test_flags_are_checked_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    missing = tmp_path / "no-such-model"
    assert main(["generate", "--model", str(missing), "hi", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "does not exist" not in err


def test_max_model_len_beyond_the_model_is_refused(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(qwen3_dir), "hi", "--max-model-len", "20000"]
    assert main(args) == 2
    assert "max_model_len must be <=" in capsys.readouterr().err


def test_an_error_while_streaming_starts_its_own_line(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prompt = "Once upon a time there was a tiny language model"
    args = ["generate", "--model", str(qwen3_dir), prompt, "--max-model-len", "8"]
    assert main(args + ["--max-total-tokens", "64"]) == 2
    captured = capsys.readouterr()
    assert captured.out == prompt + "\n"
    assert captured.err.startswith("error: prompt has")


def test_ctrl_c_is_one_line(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelRunner, "generate_stream", interrupted)
    args = ["generate", "--model", str(qwen3_dir), "hi", "--max-total-tokens", "64"]
    assert main(args) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_generation_control_flags(qwen3_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        token = runner.tokenizer.encode(" time", add_special_tokens=False)[0]
        expected = runner.generate(
            "hi", max_tokens=4, temperature=0, ignore_eos=True, logit_bias={token: 100}
        )
        repeated = runner.tokenizer.decode([token] * 4)
    args = ["generate", "--model", str(qwen3_dir), "hi", "--max-tokens", "4", "--temperature", "0"]
    flags = ["--ignore-eos", "--logit-bias", f'{{"{token}": 100}}', "--repeat-check"]
    flags += ["--repeat-block-size", "1", "--repeat-min-blocks", "8", "--repeat-check-window", "8"]
    assert main(args + flags + ["--max-total-tokens", "256"]) == 0
    assert capsys.readouterr().out == "hi" + expected + "\n"
    assert expected == repeated
