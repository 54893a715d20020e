"""``vibe-sgl-lite chat``: a conversation with the model, one line of stdin per user turn.

Each turn appends the user's line to the history, renders the whole history with the model's
chat template and streams the answer, which joins the history too: the next turn's prompt
holds every earlier question and answer (and the prefix cache spares recomputing them).
``/reset`` clears the history, ``/exit`` or end of input ends the chat.

It reads stdin line by line whether or not it is a terminal, so a conversation can be piped
in (``printf 'Hi\\nAnd then?\\n' | vibe-sgl-lite chat``), which is how it is tested. Only a
terminal gets the ``> `` prompt and the greeting, so piped output is just the answers, one per
line.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any

from vibe_sgl_lite.core.runner import ModelRunner

EXIT, RESET = "/exit", "/reset"
PROMPT = "> "


def run_chat(runner: ModelRunner, sampling: dict[str, Any], system: str | None = None) -> int:
    """Chat on ``sys.stdin``/``sys.stdout`` until ``/exit`` or end of input; returns 0.

    On a terminal, a failed turn (e.g. a history grown past ``max_model_len``) is reported and
    dropped, and the chat goes on; from a pipe it raises, so a script sees the failure.
    """
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": system}] if system else []
    # Render once now: a model without a chat template fails before the first question.
    runner.tokenizer.apply_chat_template([*start, {"role": "user", "content": "hi"}])
    if interactive:
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history for input())
        print(f"{runner.model_path.name}: {RESET} clears the history, {EXIT} or Ctrl-D ends")
    history = list(start)
    while True:
        try:
            line = input(PROMPT if interactive else "")
        except EOFError:
            if interactive:
                print()  # the shell's prompt starts on a line of its own
            return 0
        if line.strip() == EXIT:
            return 0
        if line.strip() == RESET:
            history = list(start)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        try:
            history.append(
                {"role": "assistant", "content": stream_answer(runner, history, sampling)}
            )
        except ValueError as exc:
            if not interactive:
                raise
            history.pop()
            print(f"error: {exc}", file=sys.stderr)


def stream_answer(
    runner: ModelRunner, messages: list[dict[str, str]], sampling: dict[str, Any]
) -> str:
    """Print the answer to ``messages`` as it is generated, then a newline; returns its text.

    The prompt is built as ``ModelRunner.chat`` builds it (template text, encoded without
    special tokens: the template already wrote them), so the answer is ``chat``'s answer.
    """
    tok = runner.tokenizer
    ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
    pieces: list[str] = []
    try:
        for piece in runner.generate_stream(ids, **sampling):
            print(piece, end="", flush=True)
            pieces.append(piece)
    finally:
        print()  # an error or Ctrl-C is reported on a line of its own
    return "".join(pieces)
