"""One streaming driver for every OpenAI endpoint; each API only says how a choice reads.

    for each choice, in order:          ChoiceFormat.opening(index)   (chat: the role)
        for each Delta of its request:  ChoiceFormat.step(index, delta)
    if stream_options.include_usage:    a chunk with no choices and the usage
    data: [DONE]

Every choice dict becomes one server-sent chunk (``ChunkHead.chunk``). A request that fails
mid-stream ends it with OpenAI's error object as the last event (the status line went out with
the first chunk), and whichever way the stream ends, a client that hangs up included, the
requests still running are aborted.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi.responses import StreamingResponse

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.server.protocol import CommonFields
from vibe_sgl_lite.server.request_handle import Delta, RequestHandle
from vibe_sgl_lite.server.responses import APIError, error_body, sse, stream_chunk, usage
from vibe_sgl_lite.server.submission import abort_all, check_finished, failure

Choice = dict[str, Any]
"""One entry of a chunk's ``choices``, in the API's own shape."""


class ChoiceFormat(Protocol):
    """How one API streams a choice: what opens it, and what each engine event adds."""

    def opening(self, index: int) -> list[Choice]: ...

    def step(self, index: int, delta: Delta) -> list[Choice]: ...


@dataclass(frozen=True)
class ChunkHead:
    """The fields every chunk of one response repeats."""

    kind: str  # "text_completion" or "chat.completion.chunk"
    rid: str
    created: int
    model: str

    def chunk(self, choices: list[Choice], **extra: Any) -> str:
        return stream_chunk(self.kind, self.rid, self.created, self.model, choices, **extra)


def event_stream(
    body: CommonFields,
    handles: list[RequestHandle],
    fmt: ChoiceFormat,
    head: ChunkHead,
    renames: dict[str, str],
) -> StreamingResponse:
    """The SSE response streaming ``handles`` (``n`` choices per prompt, prompt-major)."""
    return StreamingResponse(
        _events(body, handles, fmt, head, renames), media_type="text/event-stream"
    )


async def _events(
    body: CommonFields,
    handles: list[RequestHandle],
    fmt: ChoiceFormat,
    head: ChunkHead,
    renames: dict[str, str],
) -> AsyncIterator[str]:
    outputs: list[GenerationOutput] = []
    try:
        for index, handle in enumerate(handles):
            for choice in fmt.opening(index):
                yield head.chunk([choice])
            async for delta in handle.events():
                if (event := _failure_event(delta, renames)) is not None:
                    yield event
                    return
                for choice in fmt.step(index, delta):
                    yield head.chunk([choice])
                if delta.output is not None:
                    outputs.append(delta.output)
        if body.stream_options is not None and body.stream_options.include_usage:
            yield head.chunk([], usage=usage(outputs, body.n))
        yield "data: [DONE]\n\n"
    finally:
        abort_all(handles)


def _failure_event(delta: Delta, renames: dict[str, str]) -> str | None:
    """The SSE error event that ends a stream (OpenAI's shape), if ``delta`` is a failure."""
    try:
        if delta.error is not None:
            raise failure(delta, renames)
        check_finished([delta.output] if delta.output is not None else [])
    except APIError as exc:
        return sse(error_body(exc.status, exc.message, exc.param))
    return None
