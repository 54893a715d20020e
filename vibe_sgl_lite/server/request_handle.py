"""``RequestHandle``: one engine request as an HTTP handler sees it, a stream of ``Delta``s.

The engine thread fills the handle (``admit``, ``push``); the handler, in the event loop, awaits
``admitted()`` and iterates ``events()``. Everything crossing from the engine thread goes
through ``call_soon_threadsafe``, so the handle's queue and future are only ever touched by the
event loop that owns them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import TokenLogprobs
from vibe_sgl_lite.scheduler import Request


@dataclass
class Delta:
    """What one request produced since the last event (``output`` set on the final one)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    output: GenerationOutput | None = None
    error: str | None = None  # the request was refused or failed; ``status`` says whose fault
    status: int = 400  # 400: refused (the message names the field), 500: engine, 503: stopping


class RequestHandle:
    """One request as a handler sees it: an async stream of ``Delta`` events."""

    def __init__(
        self,
        asyncio_loop: asyncio.AbstractEventLoop,
        send_abort: Callable[[RequestHandle], None],
    ) -> None:
        """``send_abort``: asks the engine thread to abort this request (``EngineLoop``'s)."""
        self._asyncio_loop = asyncio_loop
        self._send_abort = send_abort
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self._verdict: asyncio.Future[Delta | None] = asyncio_loop.create_future()
        self.request: Request | None = None  # set by the engine thread once queued
        self.finished = False
        self.sent_tokens = 0  # engine thread: tokens already sent
        self.sent_logprobs = 0

    def push(self, delta: Delta) -> None:
        """Engine thread -> event loop."""
        self._asyncio_loop.call_soon_threadsafe(self.queue.put_nowait, delta)

    def admit(self, refusal: Delta | None) -> None:
        """Engine thread: the request was queued (``None``) or refused (also sent as an event)."""
        self._asyncio_loop.call_soon_threadsafe(self._settle, refusal)
        if refusal is not None:
            self.push(refusal)

    def _settle(self, refusal: Delta | None) -> None:
        if not self._verdict.done():
            self._verdict.set_result(refusal)

    async def admitted(self) -> Delta | None:
        """``None`` once the engine has queued the request, else the refusal (``error`` set).

        A handler awaits this before it starts a stream, so that a request the engine refuses
        (a prompt too long, a token id out of range, a grammar that does not compile) gets an
        HTTP error status instead of an error inside a ``200`` event stream.
        """
        return await self._verdict

    async def events(self) -> AsyncIterator[Delta]:
        """Every event until the final one (``output`` or ``error`` set)."""
        while True:
            delta = await self.queue.get()
            yield delta
            if delta.output is not None or delta.error is not None:
                self.finished = True
                return

    def abort(self) -> None:
        """The client went away: free the request's pages (idempotent)."""
        if not self.finished:
            self._send_abort(self)
