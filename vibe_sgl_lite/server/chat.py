"""``POST /v1/chat/completions``: the model's chat template, then a completion of it.

The messages become one prompt through the tokenizer's own template; the ``n`` choices all
continue it. A streamed choice opens with the assistant's role, carries its text in
``delta.content`` and ends with a chunk of its own holding only the finish reason, as OpenAI's
does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from vibe_sgl_lite.server.context import Context, ServedModel
from vibe_sgl_lite.server.protocol import ChatCompletionRequest
from vibe_sgl_lite.server.reasoning import ReasoningSplitter, Split, split_reasoning
from vibe_sgl_lite.server.request_handle import Delta
from vibe_sgl_lite.server.responses import CHAT_RENAMES, APIError, Decode, chat_logprobs, usage
from vibe_sgl_lite.server.streaming import Choice, ChunkHead, event_stream
from vibe_sgl_lite.server.submission import check_finished, collect, params_for, start
from vibe_sgl_lite.server.tool_parsers import ToolCallStream
from vibe_sgl_lite.server.tools import (
    check_request,
    template_kwargs,
    template_messages,
    tool_message,
    with_grammar,
)

router = APIRouter()
PROMPT_TAIL_TOKENS = 32  # enough of the prompt's end to see an open <think>


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, context: Context
) -> dict[str, Any] | StreamingResponse:
    model = context.model_for(body.model)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    max_field = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
    renames = {**CHAT_RENAMES, "max_tokens": max_field}
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    tool_parser = check_request(body, model.tool_call_parser)
    try:
        prompt = model.chat_prompt(template_messages(body), template_kwargs(body))
    except (ValueError, TemplateError) as exc:  # no template, or its raise_exception(...)
        raise APIError(400, f"messages: {exc}", "messages") from None
    except TypeError as exc:  # a kwarg clashing with apply_chat_template's own ("tokenize")
        raise APIError(400, f"chat_template_kwargs: {exc}", "chat_template_kwargs") from None
    reasoning = Reasoning.of(model, prompt)
    if max_tokens is None:  # up to the model's length, as OpenAI does
        max_tokens = max(1, min(model.max_model_len - len(prompt), model.max_model_len))
    params = params_for(body, model.max_model_len, max_tokens, logprobs, renames, model.lora_name)
    params = with_grammar(body, params, tool_parser)
    created, rid = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
    handles = await start(context.engine_loop(), [prompt], params, renames)
    if body.stream:
        fmt = ChatChoices(body.logprobs, model.token_text, reasoning, tool_parser)
        head = ChunkHead("chat.completion.chunk", rid, created, model.name)
        return event_stream(body, handles, fmt, head, renames)
    outputs = await collect(handles, request, renames)
    check_finished(outputs)
    messages = [tool_message(tool_parser, reasoning.message(out.text)) for out in outputs]
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", **messages[i]},
            "logprobs": (
                chat_logprobs(out.logprobs, model.token_text)
                if body.logprobs and out.logprobs is not None
                else None
            ),
            "finish_reason": "tool_calls" if "tool_calls" in messages[i] else out.finish_reason,
        }
        for i, out in enumerate(outputs)
    ]
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model.name,
        "choices": choices,
        "usage": usage(outputs, body.n),
    }


@dataclass(frozen=True)
class Reasoning:
    """The served ``--reasoning-parser`` (``None``: off) and the rendered prompt's tail, which
    tells whether the template left a ``<think>`` open (``reasoning.py``)."""

    parser: str | None
    prompt_tail: str

    @classmethod
    def of(cls, model: ServedModel, prompt: list[int]) -> Reasoning:
        if model.reasoning_parser is None:
            return cls(None, "")
        tail = model.tokenizer.decode(prompt[-PROMPT_TAIL_TOKENS:], skip_special_tokens=False)
        return cls(model.reasoning_parser, tail)

    def splitter(self) -> ReasoningSplitter | None:
        return None if self.parser is None else ReasoningSplitter(self.parser, self.prompt_tail)

    def message(self, text: str) -> dict[str, str | None]:
        """A whole answer's message fields: ``content``, and ``reasoning_content`` if parsed."""
        if self.parser is None:
            return {"content": text}
        split = split_reasoning(self.parser, text, self.prompt_tail)
        return {"content": split.content, "reasoning_content": split.reasoning or None}


@dataclass(frozen=True)
class ChatChoices:
    """Streamed chat choices: the role, each step's content, then the finish reason alone."""

    with_logprobs: bool
    token_text: Decode
    reasoning: Reasoning = field(default_factory=lambda: Reasoning(None, ""))
    tool_parser: str | None = None  # tools.py: the request's --tool-call-parser, if any
    _splitters: dict[int, ReasoningSplitter] = field(default_factory=dict)
    _tool_streams: dict[int, ToolCallStream] = field(default_factory=dict)

    def opening(self, index: int) -> list[Choice]:
        splitter = self.reasoning.splitter()
        if splitter is not None:
            self._splitters[index] = splitter
        if self.tool_parser is not None:
            self._tool_streams[index] = ToolCallStream(self.tool_parser)
        role = {"role": "assistant", "content": ""}
        return [{"index": index, "delta": role, "logprobs": None, "finish_reason": None}]

    def step(self, index: int, delta: Delta) -> list[Choice]:
        choices: list[Choice] = []
        logprobs = None
        if self.with_logprobs and delta.logprobs:
            logprobs = chat_logprobs(delta.logprobs, self.token_text)
        content: dict[str, str] = {"content": delta.text} if delta.text else {}
        splitter = self._splitters.get(index)
        if splitter is not None:  # a partial </think> is held back until the next piece
            split = splitter.feed(delta.text)
            if delta.output is not None:
                rest = splitter.finish()
                split = Split(split.reasoning + rest.reasoning, split.content + rest.content)
            content = {"reasoning_content": split.reasoning} if split.reasoning else {}
            content |= {"content": split.content} if split.content else {}
        calls: list[Choice] = []
        if (tools := self._tool_streams.get(index)) is not None:  # a call waits for the end
            text = tools.feed(content.pop("content", ""))
            if delta.output is not None:
                held, parsed = tools.finish()
                text += held or ""
                calls = [{"tool_calls": [e]} for i, c in enumerate(parsed) for e in c.chunks(i)]
            content |= {"content": text} if text else {}
        if content or logprobs is not None:
            content = content or {"content": ""}
            choices.append(
                {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": None}
            )
        for call in calls:
            choices.append({"index": index, "delta": call, "logprobs": None, "finish_reason": None})
        finish = delta.output.finish_reason if delta.output is not None else None
        if finish is not None:
            finish = "tool_calls" if calls else finish
            choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": finish})
        return choices
