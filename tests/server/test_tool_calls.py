"""Tool calls on ``/v1/chat/completions``: the parsers on text, then real generation.

The tiny random Qwen3 gets a Qwen-style ChatML template with tools; ``tool_choice`` "required"
or a named function makes the grammar force a call out of it, so the parse path (and the
streamed ``delta.tool_calls``) is exercised by generation, not only by text fed to the parser.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.server.conftest import MODEL, LiveServer, serve, tiny_runner
from vibe_sgl_lite.server import create_app
from vibe_sgl_lite.server.tool_parsers import ToolCallStream, parse_tool_calls

QWEN_TOOLS_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\n# Tools\n\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call><|im_end|>\n{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m.role == 'assistant' %}<|im_start|>assistant\n{{ m.content or '' }}"
    "{%- for tc in m.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ tc.function.name }}", "arguments": {{ tc.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n"
    "{%- elif m.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ m.content }}\n"
    "</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "enum": ["Paris", "Tokyo"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "noop", "description": "does nothing"}},
]
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def valid_weather(arguments: str) -> None:
    """The arguments against ``WEATHER`` (checked by hand: the schema is small)."""
    args = json.loads(arguments)
    assert set(args) == {"city", "days"}
    assert args["city"] in ("Paris", "Tokyo") and isinstance(args["days"], int)
    assert 1 <= args["days"] <= 7


# --- the parsers, on text ---


def test_hermes_calls_and_content() -> None:
    text = 'Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call>\n'
    text += '<tool_call>{"name": "g", "arguments": "{\\"b\\": 2}"}</tool_call>'
    content, calls = parse_tool_calls("hermes", text)
    assert content == "Sure."
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("f", {"a": 1}), ("g", {"b": 2})]
    assert calls[0].message()["id"].startswith("call_")


@pytest.mark.parametrize(
    "text", ["no call here", '<tool_call>{"name": "f", "argu', "<tool_call>[1]</tool_call>"]
)
def test_unparsable_stays_content(text: str) -> None:
    assert parse_tool_calls("qwen", text) == (text, [])


def test_llama3_json() -> None:
    text = '<|python_tag|>{"name": "f", "parameters": {"x": "y"}}; {"name": "g", "parameters": {}}'
    content, calls = parse_tool_calls("llama3", text)
    assert content is None and [c.name for c in calls] == ["f", "g"]
    assert json.loads(calls[0].arguments) == {"x": "y"}
    assert parse_tool_calls("llama3", "Hello {") == ("Hello {", [])


def test_stream_holds_back_a_call() -> None:
    stream = ToolCallStream("hermes")
    pieces = ["Hi <tool", '_call>{"name": "f", ', '"arguments": {}}</tool_call>']
    assert "".join(stream.feed(p) for p in pieces) == "Hi "
    content, calls = stream.finish()
    assert content is None and calls[0].name == "f"
    plain = ToolCallStream("hermes")
    assert plain.feed("a <t") == "a " and plain.feed("x") == "<tx" and plain.finish() == ("", [])


# --- real generation ---


@pytest.fixture(scope="module")
def tool_server(qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model_dir = tmp_path_factory.mktemp("qwen3_tools") / "m"
    shutil.copytree(qwen3_dir, model_dir)
    (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    config_path = model_dir / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = QWEN_TOOLS_TEMPLATE
    config_path.write_text(json.dumps(config))
    with tiny_runner(model_dir) as runner, serve(runner) as live:
        context = live.app.state.context  # as `serve --tool-call-parser hermes`
        context.model = dataclasses.replace(context.model, tool_call_parser="hermes")
        yield live


def test_template_renders_tools_and_results(tool_server: LiveServer) -> None:
    model = tool_server.app.state.context.model
    call = {"id": "call_1", "type": "function", "function": {"name": "noop", "arguments": "{}"}}
    messages = [
        *ASK,
        {"role": "assistant", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = model.tokenizer.apply_chat_template(messages, tools=TOOLS)
    assert '"name": "get_weather"' in text and "<tool_response>\nsunny" in text
    assert '<tool_call>\n{"name": "noop"' in text
    reply = tool_server.client().chat.completions.create(
        model=MODEL, messages=messages, tools=TOOLS, max_tokens=4  # type: ignore[arg-type]
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}]
)
def test_forced_call(tool_server: LiveServer, choice: Any) -> None:
    reply = tool_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=200, seed=3  # type: ignore[arg-type]
    )
    out = reply.choices[0]
    assert out.finish_reason == "tool_calls" and out.message.content is None
    calls = out.message.tool_calls or []
    assert len(calls) == 1 and calls[0].id.startswith("call_") and calls[0].type == "function"
    if isinstance(choice, dict) or calls[0].function.name == "get_weather":
        assert calls[0].function.name == "get_weather"
        valid_weather(calls[0].function.arguments)
    else:
        assert calls[0].function.name == "noop"


def test_forced_call_streamed(tool_server: LiveServer) -> None:
    choice: Any = {"type": "function", "function": {"name": "get_weather"}}
    stream = tool_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice=choice, max_tokens=200, stream=True, seed=5  # type: ignore[arg-type]
    )
    ids, names, arguments, finish, content = set(), "", "", None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for call in delta.tool_calls or []:
            assert call.index == 0
            ids.add(call.id) if call.id else None
            names += (call.function.name or "") if call.function else ""
            arguments += (call.function.arguments or "") if call.function else ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert len(ids) == 1 and names == "get_weather"
    valid_weather(arguments)


def test_none_gives_no_calls(tool_server: LiveServer) -> None:
    reply = tool_server.client().chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=8  # type: ignore[arg-type]
    )
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].finish_reason in ("stop", "length")


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        (
            {"tools": [{"type": "function", "function": {"parameters": {}}}]},
            "tools.0.function.name",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}
                ]
            },
            "tools",
        ),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "zap"}}},
            "tool_choice",
        ),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_input_400(tool_server: LiveServer, extra: dict[str, Any], param: str) -> None:
    body = {"model": MODEL, "messages": ASK, "max_tokens": 4, **extra}
    status, reply = tool_server.request("POST", "/v1/chat/completions", body)
    assert status == 400, reply
    assert reply["error"]["param"] == param


def test_unknown_parser_refused(tool_server: LiveServer) -> None:
    with pytest.raises(ValueError, match="tool_call_parser"):
        create_app(None, MODEL, tool_call_parser="xml")  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        tool_server.client().chat.completions.create(
            model=MODEL, messages=ASK, tools=[{"type": "function"}], max_tokens=4  # type: ignore[list-item]
        )
