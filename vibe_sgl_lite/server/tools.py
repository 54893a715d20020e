"""A chat body's ``tools`` and ``tool_choice``: checked, and turned into a grammar when forced.

``tool_choice`` is ``"none"`` (no parsing), ``"auto"`` (the default when ``tools`` are given:
the model decides, and its output is parsed when the server has a ``--tool-call-parser``),
``"required"`` or ``{"type": "function", "function": {"name": ...}}``. The last two are not
left to the model: the output is constrained by the grammar engine (``sampling/structured.py``)
to exactly one call, written in the parser's format (Hermes' when the server has none), whose
arguments match the function's ``parameters`` schema, so the call always parses and validates.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import llguidance

from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.protocol import ChatCompletionRequest
from vibe_sgl_lite.server.responses import APIError
from vibe_sgl_lite.server.tool_parsers import parse_tool_calls

# The forced call is compact JSON, as json_schema output is (sampling/structured.py): flexible
# whitespace lets a small model spend its max_tokens on blanks.
_NO_BLANKS = {"whitespace_flexible": False}
# OpenAI: a function without ``parameters`` takes none.
_NO_ARGUMENTS = {"type": "object", "properties": {}, "additionalProperties": False}


def check_tools(body: ChatCompletionRequest) -> None:
    """``ValueError`` naming the field: a bad ``parameters`` schema, an unknown function."""
    names = []
    for i, tool in enumerate(body.tools or []):
        schema = tool.function.parameters
        if schema is not None:
            error = llguidance.LLMatcher.validate_grammar(
                llguidance.LLMatcher.grammar_from_json_schema(schema)
            )
            if error:
                raise ValueError(f"tools[{i}].function.parameters: invalid JSON schema: {error}")
        names.append(tool.function.name)
    choice = body.tool_choice
    if choice is not None and choice != "none" and not names:
        raise ValueError("tool_choice needs tools")
    if not isinstance(choice, str) and choice is not None and choice.function.name not in names:
        raise ValueError(f"tool_choice names {choice.function.name!r}, which is not in tools")


def parser_for(body: ChatCompletionRequest, server_parser: str | None) -> str | None:
    """The parser this request's output goes through, or ``None`` for plain content."""
    if not body.tools or body.tool_choice == "none":
        return None
    if forced(body):
        return server_parser or "hermes"
    return server_parser


def forced(body: ChatCompletionRequest) -> bool:
    return bool(body.tools) and body.tool_choice not in (None, "none", "auto")


def forced_grammar(body: ChatCompletionRequest, parser: str) -> str:
    """The Lark grammar (llguidance's, with ``%json``) of one call to an allowed function."""
    tools = body.tools or []
    choice = body.tool_choice
    allowed = [
        t.function
        for t in tools
        if isinstance(choice, str) or choice is None or t.function.name == choice.function.name
    ]
    args_key = "parameters" if parser == "llama3" else "arguments"
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": f.name},
                args_key: f.parameters or _NO_ARGUMENTS,
            },
            "required": ["name", args_key],
            "additionalProperties": False,
        }
        for f in allowed
    ]
    schema = options[0] if len(options) == 1 else {"anyOf": options}
    call = "%json " + json.dumps({**schema, "x-guidance": _NO_BLANKS})
    if parser == "llama3":
        return f"start: {call}\n"
    return f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {call}\n'


def template_tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The ``tools=`` of the chat template: OpenAI's shape, which HF templates read."""
    if not body.tools:
        return None
    return [t.model_dump(exclude_none=True) for t in body.tools]


def check_request(body: ChatCompletionRequest, server_parser: str | None) -> str | None:
    """The request's parser (``parser_for``); a bad ``tools``/``tool_choice`` is a 400."""
    try:
        check_tools(body)
    except ValueError as exc:
        param = "tool_choice" if str(exc).startswith("tool_choice") else "tools"
        raise APIError(400, str(exc), param) from None
    return parser_for(body, server_parser)


def template_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages for the template; earlier calls' arguments as objects, which templates
    render with ``tojson`` (Llama 3's) or accept either way (Qwen's)."""
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("arguments"), str):
                try:
                    function["arguments"] = json.loads(function["arguments"])
                except json.JSONDecodeError:
                    pass  # left as the client wrote it
    return messages


def template_kwargs(body: ChatCompletionRequest) -> dict[str, Any]:
    """``chat_template_kwargs`` and, with ``tools``, the template's ``tools=``."""
    kwargs = dict(body.chat_template_kwargs or {})
    tools = template_tools(body)
    return kwargs if tools is None else {**kwargs, "tools": tools}


def with_grammar(
    body: ChatCompletionRequest, params: list[SamplingParams], parser: str | None
) -> list[SamplingParams]:
    """``params`` constrained to one call when ``tool_choice`` forces it."""
    if parser is None or not forced(body):
        return params
    if any(p.json_schema or p.regex or p.grammar for p in params):
        message = "tool_choice 'required' or a named function takes no other constraint"
        raise APIError(400, message, "tool_choice")
    grammar = forced_grammar(body, parser)
    return [dataclasses.replace(p, grammar=grammar) for p in params]


def tool_message(parser: str | None, message: dict[str, Any]) -> dict[str, Any]:
    """A finished answer's message fields with its ``content`` parsed into ``tool_calls``."""
    if parser is None or not message.get("content"):
        return message
    content, calls = parse_tool_calls(parser, message["content"])
    if not calls:
        return message
    return {**message, "content": content, "tool_calls": [c.message() for c in calls]}
