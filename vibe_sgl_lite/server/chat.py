"""``POST /v1/chat/completions``: the model's chat template, then a completion of it.

The messages become one prompt through the tokenizer's own template; the ``n`` choices all
continue it. A streamed choice opens with the assistant's role, carries its text in
``delta.content`` and ends with a chunk of its own holding only the finish reason, as OpenAI's
does.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from jinja2 import TemplateError

from vibe_sgl_lite.server.context import Context
from vibe_sgl_lite.server.protocol import ChatCompletionRequest
from vibe_sgl_lite.server.request_handle import Delta
from vibe_sgl_lite.server.responses import CHAT_RENAMES, APIError, Decode, chat_logprobs, usage
from vibe_sgl_lite.server.streaming import Choice, ChunkHead, event_stream
from vibe_sgl_lite.server.submission import check_finished, collect, params_for, start

router = APIRouter()


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
    try:
        prompt = model.chat_prompt([m.model_dump(exclude_none=True) for m in body.messages])
    except (ValueError, TemplateError) as exc:  # no template, or its raise_exception(...)
        raise APIError(400, f"messages: {exc}", "messages") from None
    if max_tokens is None:  # up to the model's length, as OpenAI does
        max_tokens = max(1, min(model.max_model_len - len(prompt), model.max_model_len))
    params = params_for(body, model.max_model_len, max_tokens, logprobs, renames)
    created, rid = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
    handles = await start(context.engine_loop(), [prompt], params, renames)
    if body.stream:
        fmt = ChatChoices(body.logprobs, model.token_text)
        head = ChunkHead("chat.completion.chunk", rid, created, model.name)
        return event_stream(body, handles, fmt, head, renames)
    outputs = await collect(handles, request, renames)
    check_finished(outputs)
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": (
                chat_logprobs(out.logprobs, model.token_text)
                if body.logprobs and out.logprobs is not None
                else None
            ),
            "finish_reason": out.finish_reason,
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
class ChatChoices:
    """Streamed chat choices: the role, each step's content, then the finish reason alone."""

    with_logprobs: bool
    token_text: Decode

    def opening(self, index: int) -> list[Choice]:
        role = {"role": "assistant", "content": ""}
        return [{"index": index, "delta": role, "logprobs": None, "finish_reason": None}]

    def step(self, index: int, delta: Delta) -> list[Choice]:
        choices: list[Choice] = []
        logprobs = None
        if self.with_logprobs and delta.logprobs:
            logprobs = chat_logprobs(delta.logprobs, self.token_text)
        if delta.text or logprobs is not None:
            content = {"content": delta.text}
            choices.append(
                {"index": index, "delta": content, "logprobs": logprobs, "finish_reason": None}
            )
        finish = delta.output.finish_reason if delta.output is not None else None
        if finish is not None:
            choices.append({"index": index, "delta": {}, "logprobs": None, "finish_reason": finish})
        return choices
