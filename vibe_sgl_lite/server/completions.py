"""``POST /v1/completions``: text completion of one or more prompts, streamed or not.

Choices are prompt-major: with ``n`` choices per prompt, choice ``i`` completes prompt
``i // n``. With ``echo`` each choice's text starts with its prompt, and the logprobs'
``text_offset``s count from the start of that full text.

``echo`` with ``logprobs`` also scores the prompt, as OpenAI's legacy API and vLLM do: the
logprobs cover every prompt token (the first ``null``) and then the generated ones, which is how
evaluation harnesses compute log-likelihoods. ``max_tokens: 0`` then scores the prompt alone (the
engine generates one token, which is dropped). Streaming does not carry prompt logprobs, so
``echo`` with ``stream`` and ``logprobs`` (or ``max_tokens: 0``) is a 400.
"""

from __future__ import annotations

import dataclasses
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
    echo_logprobs,
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
    score_prompt = body.echo and body.logprobs is not None
    score_only = body.echo and body.max_tokens == 0
    if body.stream and (score_prompt or score_only):
        raise APIError(
            400, "echo with stream is not supported with logprobs or max_tokens 0", "echo"
        )
    prompts = prompts_of(body.prompt)
    max_tokens = 1 if score_only else body.max_tokens
    params = params_for(
        body, model.max_model_len, max_tokens, body.logprobs, COMPLETION_RENAMES, model.lora_name
    )
    if score_prompt:
        params = [dataclasses.replace(p, prompt_logprobs=body.logprobs) for p in params]
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
    if score_only:  # the one token generated is not part of the answer
        outputs = [
            dataclasses.replace(o, token_ids=[], text="", logprobs=[], finish_reason="length")
            for o in outputs
        ]
    choices = []
    for index, (out, prefix) in enumerate(zip(outputs, prefixes)):
        logprobs = None
        if score_prompt and out.prompt_logprobs is not None:
            logprobs = echo_logprobs(
                out.prompt_token_ids,
                out.prompt_logprobs,
                out.logprobs or [],
                len(prefix),
                model.token_text,
            )
        elif with_logprobs and out.logprobs is not None:
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
