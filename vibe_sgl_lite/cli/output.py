"""What ``generate`` prints: completions, streamed or not, their logprobs, and a closed pipe.

A streamed completion shows its prompt only once the engine has accepted the request, so a
refused prompt (too long, an invalid regex) prints one ``error:`` line and nothing on stdout,
exactly as ``--no-stream`` does. Logprobs (``--logprobs N``) go where they cannot tangle with
the text: streamed, one line per token on stderr; not streamed, one JSON line per prompt on
stdout after its text.

Nothing here imports torch: the runner's objects arrive as arguments.
"""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Sequence
from contextlib import closing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vibe_sgl_lite.core.runner import ModelRunner
    from vibe_sgl_lite.core.tokenizer import Tokenizer
    from vibe_sgl_lite.sampling import TokenLogprobs

SEPARATOR = "-" * 40
"""Printed after each completion of a ``--no-stream`` run."""

BROKEN_PIPE_EXIT = 141
"""The exit code of a process killed by SIGPIPE (128 + 13), which is how ``cat`` or ``yes``
end when their reader stops reading: a shell's ``pipefail`` still sees the output was cut."""


def stream_completion(runner: ModelRunner, prompt: str, sampling: dict[str, Any]) -> None:
    """Print ``prompt`` and then its completion as it is generated; logprobs on stderr.

    The first delta is taken before the prompt is printed: asking for it is what submits the
    request, so a refused prompt raises ``ValueError`` while stdout is still empty. A request
    that fails later (a plugin raised) raises ``RuntimeError`` after the text it produced.
    """
    tok = runner.tokenizer
    with closing(runner.stream_deltas(prompt, **sampling)) as deltas:
        first = next(deltas)
        print(prompt, end="", flush=True)
        try:
            for delta in itertools.chain([first], deltas):
                print(delta.text, end="", flush=True)
                for item in delta.logprobs:
                    print(logprob_line(tok, item), file=sys.stderr, flush=True)
                if delta.error is not None:
                    raise RuntimeError(delta.error)
        finally:
            print()  # an error or Ctrl-C is reported on a line of its own


def print_completions(
    runner: ModelRunner, prompts: Sequence[str], sampling: dict[str, Any]
) -> None:
    """Generate every prompt in one batch, then print each prompt with its completion (and its
    logprobs as JSON), or raise ``ValueError`` naming the prompts that failed, printing none.

    A single prompt's error is its message alone, the same line a streamed run prints.
    """
    from vibe_sgl_lite.sampling import SamplingParams

    outputs = runner.generate_outputs(list(prompts), SamplingParams.from_kwargs(**sampling))
    failed = [(i, o.error) for i, o in enumerate(outputs) if o.finish_reason == "error"]
    if failed:
        if len(outputs) == 1:
            raise ValueError(failed[0][1])
        raise ValueError("; ".join(f"prompt {i}: {error}" for i, error in failed))
    for prompt, out in zip(prompts, outputs):
        print(prompt + out.text)
        if out.logprobs is not None:
            print(json.dumps({"logprobs": logprobs_json(runner.tokenizer, out.logprobs)}))
        print(SEPARATOR)


def logprob_line(tok: Tokenizer, item: TokenLogprobs) -> str:
    """One generated token for a terminal: its text (quoted, so spaces and newlines show), its
    logprob, then the top alternatives, most likely first."""
    top = "  ".join(f"{_token_text(tok, t)!r} {v:.4f}" for t, v in item.top)
    line = f"{_token_text(tok, item.token_id)!r} {item.logprob:.4f}"
    return f"{line}  top: {top}" if top else line


def logprobs_json(tok: Tokenizer, items: Sequence[TokenLogprobs]) -> list[dict[str, Any]]:
    """Per token: ``token``, ``token_id``, ``logprob`` and ``top_logprobs`` (the same three
    fields per alternative), in the spirit of OpenAI's chat ``logprobs.content``."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": _token_text(tok, token_id), "token_id": token_id, "logprob": logprob}

    return [
        {**entry(item.token_id, item.logprob), "top_logprobs": [entry(t, v) for t, v in item.top]}
        for item in items
    ]


def _token_text(tok: Tokenizer, token_id: int) -> str:
    """A token's own text, special tokens included (half a UTF-8 character shows as U+FFFD)."""
    return tok.decode([token_id], skip_special_tokens=False)


def reader_went_away() -> int:
    """After ``BrokenPipeError`` on stdout (``generate ... | head -3``): end quietly.

    The reader has all it wanted, so there is nothing to report. What is left is Python's own
    flush of stdout at exit, which would fail again and print "Exception ignored ..."; pointing
    the stdout descriptor at ``/dev/null`` makes that flush a no-op (the recipe of Python's
    ``signal`` documentation, "Note on SIGPIPE"). Returns the exit code to use.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_EXIT
