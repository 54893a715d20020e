"""``vibe-sgl-lite chat``: a conversation with the model, one line of stdin per user turn.

Each turn appends the user's line to the history, renders the whole history with the model's
chat template and streams the answer, which joins the history too: the next turn's prompt
holds every earlier question and answer (and the prefix cache spares recomputing them).
``/reset`` clears the history, ``/exit`` or end of input ends the chat.

An answer ends where the chat template would end it: at the text that closes a message and
starts the next speaker's turn (``turn_stops``), so a model that keeps talking, as the bundled
one does, stops at its next speaker instead of running to ``max_tokens``. Each answer is followed
by a blank line.

It reads stdin line by line whether or not it is a terminal, so a conversation can be piped
in (``printf 'Hi\\nAnd then?\\n' | vibe-sgl-lite chat``), which is how it is tested. Only a
terminal gets the ``> `` prompt and the greeting, so piped output is just the answers.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

from vibe_sgl_lite.cli.output import reader_went_away
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.core.tokenizer import Tokenizer

EXIT, RESET = "/exit", "/reset"
PROMPT = "> "
PLACEHOLDERS = ("vibe-question-one", "vibe-answer-one", "vibe-question-two")
"""Message contents that ``turn_stops`` renders and then finds again in the template's text."""


def run_chat(runner: ModelRunner, sampling: dict[str, Any], system: str | None = None) -> int:
    """Chat on ``sys.stdin``/``sys.stdout`` until ``/exit`` or end of input; returns 0.

    On a terminal, a failed turn (e.g. a history grown past ``max_model_len``) is reported and
    dropped, and the chat goes on; from a pipe it raises, so a script sees the failure. A reader
    that stops reading (``chat | head``) ends the chat quietly, with ``BROKEN_PIPE_EXIT``.
    """
    try:
        return _converse(runner, sampling, system)
    except BrokenPipeError:
        return reader_went_away()


def _converse(runner: ModelRunner, sampling: dict[str, Any], system: str | None) -> int:
    interactive = sys.stdin.isatty()
    start = [{"role": "system", "content": system}] if system else []
    # Render once now: a model without a chat template fails before the first question.
    runner.tokenizer.apply_chat_template([*start, {"role": "user", "content": "hi"}])
    sampling = {**sampling, "stop": [*(sampling.get("stop") or []), *turn_stops(runner.tokenizer)]}
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
    """Print the answer to ``messages`` as it is generated, then a blank line; returns it.

    The prompt is built as ``ModelRunner.chat`` builds it (template text, encoded without
    special tokens: the template already wrote them), so the answer is ``chat``'s answer.
    """
    tok = runner.tokenizer
    ids = tok.encode(tok.apply_chat_template(messages), add_special_tokens=False)
    with contextlib.closing(runner.generate_stream(ids, **sampling)) as stream:
        pieces = [next(stream, "")]  # submits the request: a refused one prints nothing
        print(pieces[0], end="", flush=True)
        try:
            for piece in stream:
                print(piece, end="", flush=True)
                pieces.append(piece)
        finally:
            print("\n")  # a blank line after the answer; an error or Ctrl-C on its own line
    return "".join(pieces)


def turn_stops(tok: Tokenizer) -> list[str]:
    """Stop strings that end an answer where the chat template ends an assistant message.

    A conversation of placeholder messages (question, answer, question) is rendered, and the
    text the template writes between the answer and the next question is read off: it closes
    the answer and opens the user's turn (``"\\n\\nUSER:\\n"`` for the bundled model's speaker
    turns). Its part shared with what follows the question (``"\\n\\nASSISTANT:\\n"``) is the
    end of any message, whoever speaks next: ``"\\n\\n"``, the blank line before the next
    speaker's name, which is where a model trained on scenes rather than chats ends its speech.
    Both are returned, and the first to complete stops the answer.

    An end of only spaces is dropped (a template that joins turns with a space would cut every
    answer after its first word). Stops written with special tokens (ChatML's ``<|im_end|>``)
    never match, as special tokens are not in the decoded text; those models end their turn
    with an end-of-sequence token anyway. A template that refuses the placeholders gives none.
    """
    from jinja2 import TemplateError

    question, answer, next_question = PLACEHOLDERS
    roles = ("user", "assistant", "user")
    messages = [{"role": r, "content": c} for r, c in zip(roles, PLACEHOLDERS)]
    try:
        text = tok.apply_chat_template(messages, add_generation_prompt=False)
        after_question = text[text.index(question) + len(question) : text.index(answer)]
        after_answer = text[text.index(answer) + len(answer) : text.index(next_question)]
    except (ValueError, TemplateError):
        return []
    message_end = os.path.commonprefix([after_question, after_answer])
    if not message_end.strip(" "):
        message_end = ""
    return [stop for stop in dict.fromkeys([message_end, after_answer]) if stop]
