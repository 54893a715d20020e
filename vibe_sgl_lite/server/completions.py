"""``POST /v1/completions``: text completion of one or more prompts, streamed or not.

Choices are prompt-major: with ``n`` choices per prompt, choice ``i`` completes prompt
``i // n``. With ``echo`` each choice's text starts with its prompt, and the logprobs'
``text_offset``s count from the start of that full text.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from vibe_sgl_lite.server.context import Context
from vibe_sgl_lite.server.protocol import CompletionRequest
from vibe_sgl_lite.server.request_handle import Delta
from vibe_sgl_lite.server.responses import (
    COMPLETION_RENAMES,
    APIError,
    Decode,
    completion_logprobs,
    usage,
)
from vibe_sgl_lite.server.streaming import Choice, ChunkHead, event_stream
from vibe_sgl_lite.server.submission import check_finished, collect, params_for, prompts_of, start

router = APIRouter()

MAX_COMPLETIONS_LOGPROBS = 5


@router.post("/v1/completions", response_model=None)
async def completions(
    body: CompletionRequest, request: Request, context: Context
) -> dict[str, Any] | StreamingResponse:
    model = context.model_for(body.model)
    if body.logprobs is not None and not 0 <= body.logprobs <= MAX_COMPLETIONS_LOGPROBS:
        raise APIError(
            400,
            f"logprobs must be an integer in [0, {MAX_COMPLETIONS_LOGPROBS}], got {body.logprobs}",
            "logprobs",
        )
    prompts = prompts_of(body.prompt)
    params = params_for(
        body, model.max_model_len, body.max_tokens, body.logprobs, COMPLETION_RENAMES
    )
    created, rid = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
    handles = await start(context.engine_loop(), prompts, params, COMPLETION_RENAMES)
    # admitted: the engine has checked the token ids, so decoding them cannot raise
    prefixes = [
        model.prompt_text(prompt) if body.echo else "" for prompt in prompts for _ in params
    ]
    with_logprobs = body.logprobs is not None
    if body.stream:
        fmt = CompletionChoices(prefixes, with_logprobs, model.token_text)
        head = ChunkHead("text_completion", rid, created, model.name)
        return event_stream(body, handles, fmt, head, COMPLETION_RENAMES)
    outputs = await collect(handles, request, COMPLETION_RENAMES)
    check_finished(outputs)
    choices = []
    for index, (out, prefix) in enumerate(zip(outputs, prefixes)):
        logprobs = None
        if with_logprobs and out.logprobs is not None:
            logprobs = completion_logprobs(out.logprobs, len(prefix), model.token_text)
        choices.append(
            {
                "index": index,
                "text": prefix + out.text,
                "logprobs": logprobs,
                "finish_reason": out.finish_reason,
            }
        )
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model.name,
        "choices": choices,
        "usage": usage(outputs, body.n),
    }


@dataclass
class CompletionChoices:
    """Streamed completion choices: the echoed prompt first, then each step's text."""

    prefixes: list[str]
    with_logprobs: bool
    token_text: Decode
    positions: list[int] = field(init=False)  # text_offset of each choice's next token

    def __post_init__(self) -> None:
        self.positions = [len(prefix) for prefix in self.prefixes]

    def opening(self, index: int) -> list[Choice]:
        prefix = self.prefixes[index]
        if not prefix:
            return []
        return [{"index": index, "text": prefix, "logprobs": None, "finish_reason": None}]

    def step(self, index: int, delta: Delta) -> list[Choice]:
        finish = delta.output.finish_reason if delta.output is not None else None
        logprobs = None
        if self.with_logprobs and delta.logprobs:
            logprobs = completion_logprobs(delta.logprobs, self.positions[index], self.token_text)
            self.positions[index] += sum(len(text) for text in logprobs["tokens"])
        if not (delta.text or finish is not None or logprobs is not None):
            return []
        return [{"index": index, "text": delta.text, "logprobs": logprobs, "finish_reason": finish}]
