"""Reasoning parsers: a model's ``<think>...</think>`` apart from its answer.

Reasoning models write their chain of thought between ``<think>`` and ``</think>`` before the
answer. ``serve --reasoning-parser NAME`` (SGLang's and vLLM's flag) returns that part as
``message.reasoning_content`` (streamed: ``delta.reasoning_content``) and the rest as
``content``. Two parsers, as those servers define them:

* ``deepseek-r1``: the chat template opens ``<think>`` in the prompt, so the output starts
  inside the reasoning; everything before ``</think>`` is reasoning (a leading ``<think>`` that
  the model writes anyway is dropped). No ``</think>`` at all: all of it is reasoning.
* ``qwen3``: thinking is optional (``chat_template_kwargs: {"enable_thinking": false}``). The
  output is inside the reasoning if it starts with ``<think>`` or if the rendered prompt already
  ends with an open ``<think>`` (Qwen3-Thinking templates); otherwise it is all content.

One state machine serves both a whole output and a stream of pieces: ``feed`` returns what can
be told apart so far and holds back a tail that may be the start of a tag split across chunks
(``"...</th"`` then ``"ink>..."``); ``finish`` releases it. A non-streamed output is one
``feed`` and a ``finish``, so the two paths cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_START = "<think>"
THINK_END = "</think>"
PARSERS = ("qwen3", "deepseek-r1")


def check_parser(name: str | None) -> None:
    """``ValueError`` naming the flag if ``name`` is not a known parser (``None``: off)."""
    if name is not None and name not in PARSERS:
        known = ", ".join(PARSERS)
        raise ValueError(f"--reasoning-parser: unknown parser {name!r}; known: {known}")


def prompt_opens_think(prompt_text: str) -> bool:
    """Whether a rendered prompt leaves a ``<think>`` block open (the output starts inside)."""
    last_open = prompt_text.rfind(THINK_START)
    return last_open >= 0 and THINK_END not in prompt_text[last_open:]


@dataclass
class Split:
    """Text told apart: the reasoning part and the answer part (either may be empty)."""

    reasoning: str = ""
    content: str = ""


class ReasoningSplitter:
    """Splits one choice's output, fed in pieces, into reasoning and content."""

    def __init__(self, parser: str, prompt_text: str = "") -> None:
        check_parser(parser)
        inside = parser == "deepseek-r1" or prompt_opens_think(prompt_text)
        # "start": a leading <think> may still come; "reasoning": before </think>; "content".
        self._state = "start"
        self._inside_without_tag = inside
        self._held = ""

    def feed(self, text: str) -> Split:
        """What ``text`` (the next piece of output) adds; a possible partial tag is held."""
        out = Split()
        self._held += text
        while self._held:
            if self._state == "start":
                if THINK_START.startswith(self._held):
                    break  # "<thi": wait for more
                if self._held.startswith(THINK_START):
                    self._held = self._held[len(THINK_START) :]
                    self._state = "reasoning"
                else:
                    self._state = "reasoning" if self._inside_without_tag else "content"
            elif self._state == "reasoning":
                end = self._held.find(THINK_END)
                if end >= 0:
                    out.reasoning += self._held[:end]
                    self._held = self._held[end + len(THINK_END) :]
                    self._state = "content"
                    continue
                keep = _partial_suffix(self._held, THINK_END)
                out.reasoning += self._held[: len(self._held) - keep]
                self._held = self._held[len(self._held) - keep :]
                break
            else:
                out.content += self._held
                self._held = ""
        return out

    def finish(self) -> Split:
        """The held-back tail, the output having ended (it was no tag after all)."""
        held, self._held = self._held, ""
        if self._state == "reasoning" or (self._state == "start" and self._inside_without_tag):
            return Split(reasoning=held)
        return Split(content=held)


def split_reasoning(parser: str, text: str, prompt_text: str = "") -> Split:
    """A whole output's reasoning and content (the non-streamed response)."""
    splitter = ReasoningSplitter(parser, prompt_text)
    first, rest = splitter.feed(text), splitter.finish()
    return Split(first.reasoning + rest.reasoning, first.content + rest.content)


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of ``text`` that is a proper start of ``tag``."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0
