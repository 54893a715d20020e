"""Reasoning models: ``--reasoning-parser`` and ``chat_template_kwargs``, with the ``openai``
client.

The parsers are checked on text (a ``</think>`` split across stream chunks included), then
through a live server whose tiny model is forced by a ``regex`` to write a think block, and
whose chat template opens ``<think>`` unless ``enable_thinking`` is false (then it prints the
marker ``NOTHINK``): so the template variables and both parser starts are exercised by real
generation.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import MODEL, LiveServer, serve, tiny_runner
from vibe_sgl_lite.server import create_app
from vibe_sgl_lite.server.reasoning import ReasoningSplitter, Split, split_reasoning

pytestmark = pytest.mark.unit

TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if enable_thinking is defined and not enable_thinking %}NOTHINK\n"
    "{% else %}<think>{% endif %}"
)


def _stream(parser: str, pieces: list[str], prompt: str = "") -> Split:
    splitter = ReasoningSplitter(parser, prompt)
    out = Split()
    for piece in pieces:
        step = splitter.feed(piece)
        assert "<" not in step.reasoning  # no piece of a tag ever leaks out
        out.reasoning += step.reasoning
        out.content += step.content
    rest = splitter.finish()
    return Split(out.reasoning + rest.reasoning, out.content + rest.content)


@pytest.mark.parametrize(
    ("parser", "prompt", "text", "reasoning", "content"),
    [
        ("qwen3", "", "<think>hmm</think>answer", "hmm", "answer"),
        ("qwen3", "", "just an answer", "", "just an answer"),
        ("qwen3", "", "a < b </think> c", "", "a < b </think> c"),  # not inside: all content
        ("qwen3", "user: hi\n<think>", "hmm</think>answer", "hmm", "answer"),
        ("qwen3", "<think>\n\n</think>\n\n", "answer", "", "answer"),  # enable_thinking off
        ("qwen3", "", "<think>cut off", "cut off", ""),
        ("deepseek-r1", "", "hmm</think>answer", "hmm", "answer"),
        ("deepseek-r1", "", "<think>hmm</think>answer", "hmm", "answer"),
        ("deepseek-r1", "", "still thinking", "still thinking", ""),
        ("deepseek-r1", "", "x </thin", "x </thin", ""),  # a partial tag at the end is text
    ],
)
def test_parsers_split_whole_and_streamed(
    parser: str, prompt: str, text: str, reasoning: str, content: str
) -> None:
    whole = split_reasoning(parser, text, prompt)
    assert (whole.reasoning, whole.content) == (reasoning, content)
    by_char = _stream(parser, list(text), prompt) if "<" not in reasoning else whole
    assert (by_char.reasoning, by_char.content) == (reasoning, content)


def test_end_tag_split_across_chunks_is_held_back() -> None:
    splitter = ReasoningSplitter("qwen3")
    assert splitter.feed("<thi") == Split()
    assert splitter.feed("nk>plan") == Split(reasoning="plan")
    assert splitter.feed(" more</th") == Split(reasoning=" more")  # "</th" held
    assert splitter.feed("ink>the answer") == Split(content="the answer")
    assert splitter.finish() == Split()


def test_unknown_parser_is_a_value_error_naming_the_flag(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="--reasoning-parser"):
        ReasoningSplitter("nope")
    with tiny_runner(qwen3_dir) as runner, pytest.raises(ValueError, match="--reasoning-parser"):
        create_app(runner, MODEL, reasoning_parser="nope")


@pytest.fixture(scope="module")
def thinking_dir(qwen3_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Qwen3 with ``TEMPLATE`` as its chat template."""
    out = tmp_path_factory.mktemp("thinking") / "model"
    shutil.copytree(qwen3_dir, out)
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = TEMPLATE
    config_path.write_text(json.dumps(config))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


@pytest.fixture(scope="module")
def qwen3_server(thinking_dir: Path) -> Iterator[LiveServer]:
    with tiny_runner(thinking_dir) as runner:
        with serve(runner, reasoning_parser="qwen3") as live:
            yield live


OPENED = "[a-z ]{1,20}</think>[a-z ]{1,20}"  # the template opened <think>
EXPLICIT = "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"
HI = [{"role": "user", "content": "hi"}]


def test_reasoning_split_non_streamed_and_streamed(qwen3_server: LiveServer) -> None:
    client = qwen3_server.client()
    params = dict(model=MODEL, messages=HI, max_tokens=60, temperature=0)
    reply = client.chat.completions.create(**params, extra_body={"regex": OPENED})
    message = reply.choices[0].message
    reasoning = getattr(message, "reasoning_content", None)
    assert reasoning and message.content and "</think>" not in reasoning + message.content
    stream = client.chat.completions.create(**params, stream=True, extra_body={"regex": OPENED})
    streamed = {"reasoning_content": "", "content": ""}
    for chunk in stream:
        for choice in chunk.choices:
            for key in streamed:
                streamed[key] += getattr(choice.delta, key, None) or ""
    assert streamed == {"reasoning_content": reasoning, "content": message.content}


def test_enable_thinking_false_reaches_the_template(qwen3_server: LiveServer) -> None:
    client = qwen3_server.client()
    params = dict(model=MODEL, messages=HI, max_tokens=60, temperature=0)
    on = client.chat.completions.create(**params, extra_body={"regex": "[a-z]{1,5}"})
    kwargs = {"chat_template_kwargs": {"enable_thinking": False}}
    off = client.chat.completions.create(**params, extra_body={"regex": EXPLICIT, **kwargs})
    assert on.usage and off.usage and off.usage.prompt_tokens > on.usage.prompt_tokens
    # Not inside a think block (NOTHINK), the explicit <think>...</think> is still reasoning.
    message = off.choices[0].message
    assert getattr(message, "reasoning_content", None) and message.content
    # Opened by the template and never closed: all of it is reasoning.
    message = on.choices[0].message
    assert getattr(message, "reasoning_content", None) and not message.content


def test_bad_chat_template_kwargs_is_a_400_naming_the_field(qwen3_server: LiveServer) -> None:
    for bad in ([1, 2], "x", {"tokenize": True}):
        body = {"model": MODEL, "messages": HI, "max_tokens": 1, "chat_template_kwargs": bad}
        status, reply = qwen3_server.request("POST", "/v1/chat/completions", body)
        assert status == 400, reply
        assert reply["error"]["param"] == "chat_template_kwargs", reply
