"""From a checked body to engine requests and back: the steps every generating endpoint shares.

    prompts_of, params_for    the body's prompts and sampling fields (400)
    start                     one request per prompt and choice, admitted or the HTTP error
    collect                   their final outputs, in order (a non-streamed answer)
    check_finished            a request that failed inside the engine: 500

Each raises ``APIError``, which the app answers in OpenAI's error shape. ``renames`` maps the
engine's field names to the body's (``responses.py``), so a 400 names what the client sent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from fastapi import Request

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.engine_loop import EngineLoop
from vibe_sgl_lite.server.protocol import CommonFields
from vibe_sgl_lite.server.request_handle import Delta, RequestHandle
from vibe_sgl_lite.server.responses import APIError, bad_request

Prompt = str | list[int]
"""One prompt: text, or token ids."""


def prompts_of(prompt: Prompt | Sequence[Prompt]) -> list[Prompt]:
    """OpenAI's four prompt shapes as a list of prompts (a string or token ids each)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    ids = [p for p in prompt if isinstance(p, int)]
    if len(ids) == len(prompt):
        return [ids]
    return [p for p in prompt if not isinstance(p, int)]  # the bodies' schemas allow no mix


def params_for(
    body: CommonFields,
    max_model_len: int,
    max_tokens: int | None,
    logprobs: int | None,
    renames: dict[str, str],
    lora_name: str | None = None,
) -> list[SamplingParams]:
    """The ``SamplingParams`` of each of the body's ``n`` choices (``max_tokens`` defaults to
    the model's length), under LoRA adapter ``lora_name`` if the body's ``model`` chose one."""
    if max_tokens is not None and not 1 <= max_tokens <= max_model_len:
        name = renames.get("max_tokens", "max_tokens")
        raise APIError(
            400, f"{name} must be an integer in [1, {max_model_len}], got {max_tokens}", name
        )
    try:
        return [
            dataclasses.replace(
                body.sampling_params(max_tokens or max_model_len, logprobs, i), lora_name=lora_name
            )
            for i in range(body.n)
        ]
    except ValueError as exc:
        raise bad_request(str(exc), renames) from None


def failure(delta: Delta, renames: dict[str, str]) -> APIError:
    """The HTTP error of a refused or failed request (``delta.error`` set)."""
    assert delta.error is not None
    if delta.status == 400:
        return bad_request(delta.error, renames)
    return APIError(delta.status, delta.error)


async def start(
    loop: EngineLoop,
    prompts: list[Prompt],
    params: list[SamplingParams],
    renames: dict[str, str],
) -> list[RequestHandle]:
    """Queue one request per prompt and choice, all at once: they share every step.

    Waits until the engine has accepted them all and raises its first refusal as the HTTP
    error, so that a stream is only ever started for requests that will run.
    """
    handles = [loop.submit(prompt, p) for prompt in prompts for p in params]
    for handle in handles:
        refusal = await handle.admitted()
        if refusal is not None:
            abort_all(handles)
            raise failure(refusal, renames)
    return handles


def abort_all(handles: list[RequestHandle]) -> None:
    for handle in handles:
        handle.abort()


async def collect(
    handles: list[RequestHandle], request: Request, renames: dict[str, str]
) -> list[GenerationOutput]:
    """Each handle's final output, in order.

    A client that hangs up on a non-streamed request would otherwise only be noticed when
    the response is written, after the engine spent the request's whole ``max_tokens``:
    a watcher aborts the requests as soon as the ASGI server reports the disconnect.
    """
    watcher = asyncio.create_task(_abort_on_disconnect(request, handles))
    outputs: list[GenerationOutput] = []
    try:
        for handle in handles:
            async for delta in handle.events():
                if delta.error is not None:
                    raise failure(delta, renames)
                if delta.output is not None:
                    outputs.append(delta.output)
    finally:
        watcher.cancel()
        abort_all(handles)
    return outputs


async def _abort_on_disconnect(request: Request, handles: list[RequestHandle]) -> None:
    """Returns once the client has gone, having aborted ``handles``."""
    while (await request.receive())["type"] != "http.disconnect":
        pass  # the body has been read, so the next message can only be the disconnect
    abort_all(handles)


def check_finished(outputs: list[GenerationOutput]) -> None:
    """A request that failed inside the engine (a plugin raised on it) is a server error
    in the OpenAI API, whose finish reasons have no ``"error"``."""
    for out in outputs:
        if out.finish_reason == "error":
            raise APIError(500, f"internal error: {out.error}")
