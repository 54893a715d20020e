"""The command line, run in-process through ``main`` and as ``python -m vibe_sgl_lite``."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vibe_sgl_lite
from tests.model_factory import CHAT_TEMPLATE
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.cli import main
from vibe_sgl_lite.cli.chat import turn_stops
from vibe_sgl_lite.core.tokenizer import Tokenizer

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


@pytest.mark.parametrize("stream", ["--stream", "--no-stream"])
def test_a_refused_prompt_is_one_error_line_and_no_echo(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], stream: str
) -> None:
    prompt = "Once upon a time there was a tiny language model"
    args = ["generate", "--model", str(qwen3_dir), prompt, "--max-model-len", "8", stream]
    assert main(args + ["--max-total-tokens", "64"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # the prompt is shown once the engine has accepted it
    assert captured.err.startswith("error: prompt has ") and captured.err.count("\n") == 1
    assert "shorter than max_model_len (8)" in captured.err


def test_a_prompt_past_the_tokenizers_length_gets_our_error_only() -> None:
    """The bundled tokenizer says ``model_max_length=1024``; transformers' warning about a
    longer text ("Token indices sequence length is longer than ...") is silenced, and both
    modes print the same single line."""
    prompt = "word " * 1100
    errors = []
    for stream in ("--stream", "--no-stream"):
        argv = ["generate", prompt, stream, "--max-total-tokens", "2048"]
        proc = subprocess.run(
            [sys.executable, "-m", "vibe_sgl_lite", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        errors.append(proc.stderr)
    assert errors[0] == errors[1]
    assert errors[0].startswith("error: prompt has ") and errors[0].count("\n") == 1


def test_ctrl_c_is_one_line(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(ModelRunner, "stream_deltas", interrupted)
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


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["generate", "--temperature", "abc"], "--temperature"),
        (["generate", "--dtype", "float64"], "--dtype"),
        (["chat", "--max-tokens", "many"], "--max-tokens"),
        (["serve", "--port", "http"], "--port"),
        (["bench", "--num-prompts", "x"], "--num-prompts"),
        (["generate", "--no-such-flag"], "--no-such-flag"),
    ],
)
def test_a_bad_flag_is_one_line_naming_it(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    """argparse would print the whole usage block (some fifty lines for ``generate``) first."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and flag in err, err
    assert err.endswith(" --help')\n")  # where the right spelling is


@pytest.mark.parametrize("mode", ["stream", "no-stream", "chat"])
def test_a_closed_stdout_ends_quietly(qwen3_dir: Path, mode: str) -> None:
    """``generate ... | head -3``: once the reader is gone, no ``Broken pipe`` error, no
    traceback, exit code 141 (SIGPIPE's). The read end is closed before the command writes
    anything, so its first write meets the closed pipe whatever the timing."""
    args = ["--model", str(qwen3_dir), "--max-tokens", "8", "--max-total-tokens", "256"]
    argv = ["chat", *args] if mode == "chat" else ["generate", "hi", f"--{mode}", *args]
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vibe_sgl_lite", *argv],
            input=b"Hi\nAnd then?\n",
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 141 and proc.stderr == b"", proc.stderr.decode()


def test_logprobs_streamed_one_line_per_token_on_stderr(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampling: dict[str, Any] = dict(max_tokens=4, temperature=0, ignore_eos=True, logprobs=2)
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        (want,) = runner.generate_outputs(["hi"], SamplingParams(**sampling))
        text = runner.tokenizer.decode
    args = ["generate", "--model", str(qwen3_dir), "hi", "--max-tokens", "4", "--temperature", "0"]
    assert main(args + ["--ignore-eos", "--logprobs", "2", "--max-total-tokens", "256"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "hi" + want.text + "\n"  # the text alone, as without --logprobs
    lines = captured.err.splitlines()
    assert want.logprobs is not None and len(lines) == len(want.logprobs) == 4
    for line, item in zip(lines, want.logprobs):
        chosen, top = line.split("  top: ")
        assert chosen == f"{text([item.token_id], False)!r} {item.logprob:.4f}"
        assert top == "  ".join(f"{text([t], False)!r} {v:.4f}" for t, v in item.top)
        assert len(item.top) == 2


def test_logprobs_not_streamed_are_json(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sampling: dict[str, Any] = dict(max_tokens=3, temperature=0, ignore_eos=True, logprobs=1)
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        want = runner.generate_outputs(["a", "b"], SamplingParams(**sampling))
    args = ["generate", "--model", str(qwen3_dir), "a", "b", "--max-tokens", "3"]
    flags = ["--temperature", "0", "--ignore-eos", "--logprobs", "1", "--max-total-tokens", "256"]
    assert main(args + flags) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    blocks = captured.out.split("-" * 40 + "\n")
    assert blocks[-1] == "" and len(blocks) == 3
    for block, prompt, out in zip(blocks, ["a", "b"], want):
        assert block.startswith(prompt + out.text + "\n")
        items = json.loads(block.rstrip("\n").rsplit("\n", 1)[1])["logprobs"]
        assert out.logprobs is not None
        assert [i["token_id"] for i in items] == out.token_ids
        assert [i["logprob"] for i in items] == pytest.approx([lp.logprob for lp in out.logprobs])
        assert [[t["token_id"] for t in i["top_logprobs"]] for i in items] == [
            [t for t, _ in lp.top] for lp in out.logprobs
        ]


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
    # Piped: the answers alone, each closed by a blank line; /reset starts over, /exit ends.
    assert printed == f"{first}\n\n{second}\n\n{first}\n\n"
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
    assert capsys.readouterr().out == expected + "\n\n"


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
    # The failed turn printed nothing and left the history: "hi" was the first question.
    assert captured.out.endswith(f"> > {answer}\n\n> \n")


def test_chat_from_a_pipe_fails_on_a_failed_turn(
    qwen3_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("word " * 100 + "\nhi\n"))
    args = ["chat", "--model", str(qwen3_dir), *CHAT_FLAGS, "--max-model-len", "64"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith("error: prompt has")


def test_chat_on_the_bundled_model_stops_at_the_next_speaker(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bundled model writes scenes, not chats, so its answer runs on into other speakers'
    lines; the chat template's end of a turn (a blank line) is what stops it."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("Good morrow.\nWhat news?\n"))
    flags = ["--temperature", "0", "--max-tokens", "60", "--max-total-tokens", "1024"]
    assert main(["chat", *flags]) == 0
    printed = capsys.readouterr().out
    with ModelRunner(max_total_tokens=1024) as runner:
        stops = turn_stops(runner.tokenizer)
        history: list[dict[str, str]] = []
        for question in ("Good morrow.", "What news?"):
            history.append(_user(question))
            ids = runner.tokenizer.encode(
                runner.tokenizer.apply_chat_template(history), add_special_tokens=False
            )
            params = SamplingParams(max_tokens=60, temperature=0, stop=stops)
            (out,) = runner.generate_outputs([ids], params)
            assert out.finish_reason == "stop" and len(out.token_ids) < 60
            assert out.text and "\n\n" not in out.text  # one speech
            history.append(_assistant(out.text))
    assert stops == ["\n\n", "\n\nUSER:\n"]
    assert printed == "".join(m["content"] + "\n\n" for m in history[1::2])


@pytest.mark.parametrize(
    "template, stops",
    [
        (  # ChatML: special tokens, never in the decoded text; the EOS ends the turn instead
            CHAT_TEMPLATE,
            ["<|im_end|>\n<|im_start|>", "<|im_end|>\n<|im_start|>user\n"],
        ),
        (  # turns joined by a space: a space cannot end a message, the user's name can
            "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}",
            [" user: "],
        ),
        ("{{ raise_exception('no') }}", []),
    ],
)
def test_turn_stops_are_read_off_the_template(
    tokenizer_dir: Path, template: str, stops: list[str]
) -> None:
    tok = Tokenizer.from_pretrained(tokenizer_dir)
    tok.hf.chat_template = template
    assert turn_stops(tok) == stops


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
