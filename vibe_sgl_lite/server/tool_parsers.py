"""Tool calls in a model's text: the two formats models are trained on, parsed into OpenAI's.

    hermes, qwen   <tool_call>{"name": ..., "arguments": {...}}</tool_call>   (any number)
    llama3         {"name": ..., "parameters": {...}}  (optionally after <|python_tag|>,
                   several separated by ";")

``parse_tool_calls`` reads a finished text; ``ToolCallStream`` does the same for a stream,
passing text through until a call may be starting and holding the rest back to the end, where
it is parsed whole (simple, and a half-written call is never sent). Text that does not parse as
calls comes back unchanged as content: a model's malformed call is its answer, not an error.
"""

from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

PARSER_NAMES = ("hermes", "qwen", "llama3")
HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
PYTHON_TAG = "<|python_tag|>"
_HERMES_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def check_parser(name: str | None) -> None:
    """``ValueError`` naming ``tool_call_parser`` when ``name`` is no known parser."""
    if name is not None and name not in PARSER_NAMES:
        raise ValueError(f"tool_call_parser must be one of {', '.join(PARSER_NAMES)}, got {name!r}")


@dataclass(frozen=True)
class ToolCall:
    """One call: the function's name and its arguments as a JSON string (OpenAI's shape)."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: f"call_{secrets.token_hex(12)}")

    def message(self) -> dict[str, Any]:
        """The entry of ``message.tool_calls``."""
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}

    def chunks(self, index: int) -> list[dict[str, Any]]:
        """The ``delta.tool_calls`` of a stream: id and name first, then the arguments."""
        head = {"name": self.name, "arguments": ""}
        return [
            {"index": index, "id": self.id, "type": "function", "function": head},
            {"index": index, "function": {"arguments": self.arguments}},
        ]


def _call_of(obj: Any, args_key: str) -> ToolCall | None:
    """A call from a decoded JSON object, or ``None`` if it is not one."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get(args_key, obj.get("arguments", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string already
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args, ensure_ascii=False))


def _hermes(text: str) -> tuple[str | None, list[ToolCall]] | None:
    if HERMES_START not in text:
        return None
    calls = []
    for match in _HERMES_CALL.finditer(text):
        try:
            call = _call_of(json.loads(match.group(1)), "arguments")
        except json.JSONDecodeError:
            return None
        if call is None:
            return None
        calls.append(call)
    content = _HERMES_CALL.sub("", text).strip()
    return content or None, calls


def _llama3(text: str) -> tuple[str | None, list[ToolCall]] | None:
    rest = text.strip().removeprefix(PYTHON_TAG).lstrip()
    if not rest.startswith("{"):
        return None
    decoder, calls = json.JSONDecoder(), []
    while rest:
        try:
            obj, end = decoder.raw_decode(rest)
        except json.JSONDecodeError:
            return None
        call = _call_of(obj, "parameters")
        if call is None:
            return None
        calls.append(call)
        rest = rest[end:].lstrip().removeprefix(";").lstrip()
    return None, calls


def parse_tool_calls(parser: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """``(content, calls)`` of a finished output; ``(text, [])`` when it holds no valid call.

    ``content`` is the text outside the calls, ``None`` when there is none."""
    parsed = _llama3(text) if parser == "llama3" else _hermes(text)
    if parsed is None or not parsed[1]:
        return text, []
    return parsed


@dataclass
class ToolCallStream:
    """One streamed choice's text: what may go out as content now, the calls at the end."""

    parser: str
    held: str = ""
    holding: bool = False  # a call may have started: everything from there waits for the end

    def feed(self, text: str) -> str:
        """The part of ``text`` that is content for sure, to be sent now."""
        self.held += text
        if self.holding:
            return ""
        if self.parser == "llama3":  # a call is the whole output, so it shows at the start
            stripped = self.held.lstrip()
            if stripped.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(stripped):
                self.holding = bool(stripped)
                return ""
            out, self.held = self.held, ""
            return out
        start = self.held.find(HERMES_START)
        if start >= 0:
            out, self.held, self.holding = self.held[:start], self.held[start:], True
            return out
        keep = _partial_suffix(self.held, HERMES_START)
        out, self.held = self.held[: len(self.held) - keep], self.held[len(self.held) - keep :]
        return out

    def finish(self) -> tuple[str | None, list[ToolCall]]:
        """The held text, parsed: the content still to send, and the calls."""
        held, self.held = self.held, ""
        content, calls = parse_tool_calls(self.parser, held)
        return content, calls


def _partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of ``text`` that begins ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0
