"""The command line, run in-process through ``main`` and as ``python -m vibe_sgl_lite``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vibe_sgl_lite
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


# ---- chat ------------------------------------------------------------------------------------

CHAT_FLAGS = [
    "--max-tokens",
    "6",
    "--temperature",
    "0",
    "--ignore-eos",
    "--max-total-tokens",
    "512",
]


def _user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _assistant(text: str) -> dict[str, str]:
    return {"role": "assistant", "content": text}


class _Terminal(io.StringIO):
    """Piped-in lines that claim to come from a terminal (the interactive path)."""

    def isatty(self) -> bool:
        return True


def test_chat_keeps_the_history_and_resets_it(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[list[int]] = []
    stream = ModelRunner.generate_stream

    def recording(self: ModelRunner, prompt: list[int], **sampling: Any) -> Iterator[str]:
        prompts.append(list(prompt))
        return stream(self, prompt, **sampling)

    monkeypatch.setattr(ModelRunner, "generate_stream", recording)
    lines = "Once upon a time\nAnd then?\n\n/reset\nOnce upon a time\n/exit\nnever asked\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["chat", "--model", str(qwen3_dir), *CHAT_FLAGS]) == 0
    printed = capsys.readouterr().out

    sampling: dict[str, Any] = dict(max_tokens=6, temperature=0, ignore_eos=True)
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        first = runner.chat([_user("Once upon a time")], **sampling)
        history = [_user("Once upon a time"), _assistant(first), _user("And then?")]
        second = runner.chat(history, **sampling)
        second_prompt = runner.tokenizer.decode(prompts[1], skip_special_tokens=False)
        assert second_prompt == runner.tokenizer.apply_chat_template(history)
    assert first and first in second_prompt  # the second turn saw the first answer
    # Piped: the answers alone, one per line; /reset starts over, /exit ends before EOF.
    assert printed == f"{first}\n{second}\n{first}\n"
    assert len(prompts) == 3 and prompts[2] == prompts[0]


def test_chat_system_message_and_end_of_input(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello"))  # no newline, then EOF
    args = ["chat", "--model", str(qwen3_dir), "--system", "Be brief.", *CHAT_FLAGS]
    assert main(args) == 0
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        messages = [{"role": "system", "content": "Be brief."}, _user("Hello")]
        expected = runner.chat(messages, max_tokens=6, temperature=0, ignore_eos=True)
    assert capsys.readouterr().out == expected + "\n"


def test_chat_on_a_terminal_reports_a_failed_turn_and_goes_on(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", _Terminal("word " * 100 + "\nhi\n"))
    args = ["chat", "--model", str(qwen3_dir), *CHAT_FLAGS, "--max-model-len", "64"]
    assert main(args) == 0
    captured = capsys.readouterr()
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        answer = runner.chat([_user("hi")], max_tokens=6, temperature=0, ignore_eos=True)
    assert captured.err.startswith("error: prompt has") and captured.err.count("\n") == 1
    # The failed turn left the history: "hi" was answered as the first question.
    assert captured.out.endswith(f"> \n> {answer}\n> \n")


def test_chat_from_a_pipe_fails_on_a_failed_turn(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("word " * 100 + "\nhi\n"))
    args = ["chat", "--model", str(qwen3_dir), *CHAT_FLAGS, "--max-model-len", "64"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "\n" and captured.err.startswith("error: prompt has")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["chat", "--top-p", "2"], "top_p must be"),
        (["chat", "--page-size", "0"], "page_size must be"),
        (["bench", "--num-prompts", "0"], "num_prompts must be >= 1"),
        (["bench", "--device", "gpu"], "device must be"),
    ],
)
def test_chat_and_bench_flags_are_checked_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    missing = tmp_path / "no-such-model"
    assert main([argv[0], "--model", str(missing), *argv[1:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


# ---- bench -----------------------------------------------------------------------------------

# tests/test_bench.py checks the bench command's workloads and reports.


def test_benchmark_script_is_the_bench_command() -> None:
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "throughput.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    for flag in ("--num-prompts", "--prompt-range", "--equal-lengths", "--shape", "--vocab"):
        assert flag in proc.stdout
    assert "--hidden" in proc.stdout and "--dtype" in proc.stdout and "--threads" in proc.stdout


# ---- help, version, load progress ------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"vibe-sgl-lite {vibe_sgl_lite.__version__}\n"


def _help_entries(capsys: pytest.CaptureFixture[str], command: str) -> dict[str, str]:
    """``{first option string: its help entry, whitespace collapsed}`` of ``COMMAND --help``."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries: dict[str, str] = {}
    current: list[str] | None = None
    for line in capsys.readouterr().out.splitlines():
        if re.match(r"  --?\w", line):
            current = [line]
            entries[line.split()[0].rstrip(",")] = ""
        elif current is not None and line.startswith("   "):
            current.append(line)
        else:
            current = None
        if current is not None:
            entries[current[0].split()[0].rstrip(",")] = " ".join(" ".join(current).split())
    return entries


@pytest.mark.parametrize("command", ["serve", "chat", "generate", "bench"])
def test_help_lists_every_engine_setting_with_its_default(
    capsys: pytest.CaptureFixture[str], command: str
) -> None:
    from vibe_sgl_lite.config import FIELDS

    entries = _help_entries(capsys, command)
    for name, field in FIELDS.items():
        entry = entries["--" + name.replace("_", "-")]
        default = 65536 if command == "bench" and name == "max_total_tokens" else field.default
        if default is None:  # explained in words, e.g. "(default: no chunking)"
            assert "(default: " in entry and "(default: None)" not in entry, entry
        else:
            assert f"(default: {default})" in entry, entry
    undocumented = [o for o, e in entries.items() if o != "-h" and "(default: " not in e]
    assert not undocumented


def test_load_progress_bar_only_when_asked(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vibe_sgl_lite.models.loader import load_model

    load_model(qwen3_dir)  # stderr is not a terminal here: no bar
    assert capsys.readouterr().err == ""
    load_model(qwen3_dir, progress=True)
    assert "Loading weights: 100%" in capsys.readouterr().err


def test_attention_method_and_int8_kv_flags(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["generate", "--model", str(qwen3_dir), "a b c d e f", "--max-tokens", "6", "--stats"]
    flags = ["--attention-method", "streaming", "--num-sink-tokens", "1", "--attention-window", "2"]
    assert main(args + flags + ["--kv-cache-dtype", "int8", "--page-size", "2"]) == 0
    out = capsys.readouterr().out
    stats = json.loads(out[out.index("{") :])
    assert stats["attention_kv_read_fraction"] < 1.0
    assert main(args + ["--attention-method", "quest"]) == 2
    assert "budget or selection_ratio" in capsys.readouterr().err
