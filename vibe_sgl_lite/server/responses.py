"""The OpenAI API's response shapes: errors, usage, logprobs and server-sent events.

Pure functions of the engine's outputs (``GenerationOutput``, ``TokenLogprobs``) and a
``decode`` function for token texts, so the endpoints (``completions.py``, ``chat.py``) read as
request -> engine -> one of these.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate
from typing import Any

from fastapi.responses import JSONResponse

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import TokenLogprobs
from vibe_sgl_lite.sampling.params import FIELD_NAMES
from vibe_sgl_lite.server.protocol import ChatCompletionRequest, CompletionRequest

Decode = Callable[[int], str]
"""A token id's text (special tokens included)."""


class APIError(Exception):
    """An HTTP error with OpenAI's body; ``param`` names the offending field, if one."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object (also the event that ends a stream that failed)."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "server_error" if status >= 500 else "invalid_request_error"
    )
    return {"error": {"message": message, "type": kind, "param": param, "code": None}}


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status)


KNOWN_FIELDS = frozenset(
    [*FIELD_NAMES, *CompletionRequest.model_fields, *ChatCompletionRequest.model_fields]
)
COMPLETION_RENAMES = {"json_schema": "response_format", "prompt_logprobs": "echo"}
CHAT_RENAMES = {**COMPLETION_RENAMES, "prompt": "messages", "logprobs": "top_logprobs"}


def bad_request(message: str, renames: dict[str, str]) -> APIError:
    """A 400 whose ``param`` is the body field the message is about, if it names one.

    ``SamplingParams`` and the engine start their messages with the field's name (``"top_p
    must be ..."``, ``"logit_bias[7] must be ..."``, ``"prompt has 900 tokens ..."``); the
    OpenAI bodies spell a few of those fields differently (``renames``: the engine's
    ``json_schema`` is the body's ``response_format``), and then the message gets the body's
    name in front. A message that starts with anything else names no field.
    """
    head = re.split(r"[\s.\[]", message, maxsplit=1)[0]
    if head not in KNOWN_FIELDS:
        return APIError(400, message)
    param = renames.get(head, head)
    return APIError(400, message if param == head else f"{param}: {message}", param)


def usage(outputs: list[GenerationOutput], n: int) -> dict[str, int]:
    """The ``usage`` object: prompt, completion and total tokens. ``outputs`` are prompt-major,
    ``n`` choices per prompt, so each prompt counts once."""
    prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs[::n])
    completion = sum(len(o.token_ids) for o in outputs)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt_tokens + completion,
    }


def completion_logprobs(
    items: list[TokenLogprobs], offset: int, token_text: Decode
) -> dict[str, Any]:
    """Completions' ``logprobs``: tokens, their logprobs, the top ones, text offsets."""
    tokens = [token_text(lp.token_id) for lp in items]
    offsets, position = [], offset
    for text in tokens:
        offsets.append(position)
        position += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": [lp.logprob for lp in items],
        "top_logprobs": [{token_text(t): v for t, v in lp.top} for lp in items],
        "text_offset": offsets,
    }


def echo_logprobs(
    prompt_ids: list[int],
    scored: list[TokenLogprobs | None],
    generated: list[TokenLogprobs],
    offset: int,
    token_text: Decode,
) -> dict[str, Any]:
    """``echo`` with ``logprobs``: the prompt's tokens (the first with ``null``s, nothing comes
    before it) then the generated ones, whose ``text_offset``s start at ``offset`` (the
    length of the echoed prompt text)."""
    tokens = [token_text(t) for t in prompt_ids]
    offsets = list(accumulate((len(t) for t in tokens[:-1]), initial=0))
    rest = completion_logprobs(generated, offset, token_text)
    return {
        "tokens": tokens + rest["tokens"],
        "token_logprobs": [None if lp is None else lp.logprob for lp in scored]
        + rest["token_logprobs"],
        "top_logprobs": [
            None if lp is None else {token_text(t): v for t, v in lp.top} for lp in scored
        ]
        + rest["top_logprobs"],
        "text_offset": offsets + rest["text_offset"],
    }


def chat_logprobs(items: list[TokenLogprobs], token_text: Decode) -> dict[str, Any]:
    """Chat's ``logprobs.content``: per token its text, logprob, bytes and top alternatives."""

    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        text = token_text(token_id)
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

    return {
        "content": [
            {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
            for lp in items
        ]
    }


def sse(data: dict[str, Any]) -> str:
    """One server-sent event, as OpenAI streams it."""
    return f"data: {json.dumps(data)}\n\n"


def stream_chunk(
    kind: str, rid: str, created: int, model: str, choices: list[dict[str, Any]], **extra: Any
) -> str:
    """One streamed chunk: ``kind`` is ``"text_completion"`` or ``"chat.completion.chunk"``;
    ``extra`` adds top-level fields (``usage`` on the last chunk)."""
    body = {"id": rid, "object": kind, "created": created, "model": model, "choices": choices}
    return sse({**body, **extra})
