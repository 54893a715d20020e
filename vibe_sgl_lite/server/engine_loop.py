"""``EngineLoop``: the synchronous engine in one thread, async HTTP handlers in the event loop.

    event loop (FastAPI handlers)                 engine thread
    ─────────────────────────────                 ───────────────────────────────────────
    handle = await loop.submit(prompt, params) ─► commands queue ─► Engine.add_request
                                                                    (ValueError -> error event)
    async for event in handle.events():       ◄── call_soon_threadsafe(queue.put_nowait, ...)
                                                  after every Engine.step: each live request's
                                                  new text and tokens; a final event when done
    handle.abort()  (client went away)        ─► commands queue ─► Engine.abort (pages freed)

The engine is only ever touched by its thread, so it needs no lock; handlers never block the
event loop (they await their request's ``asyncio.Queue``). A step that raises fails the
requests in it, never the thread: the server keeps serving.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import traceback
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import SamplingParams, TokenLogprobs
from vibe_sgl_lite.scheduler import Request


@dataclass
class Delta:
    """What one request produced since the last event (``output`` set on the final one)."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    output: GenerationOutput | None = None
    error: str | None = None  # the request was refused (a ValueError naming the field)


class RequestHandle:
    """One request as a handler sees it: an async stream of ``Delta`` events."""

    def __init__(self, loop: EngineLoop, asyncio_loop: asyncio.AbstractEventLoop) -> None:
        self._engine_loop = loop
        self._asyncio_loop = asyncio_loop
        self.queue: asyncio.Queue[Delta] = asyncio.Queue()
        self.request: Request | None = None  # set by the engine thread once queued
        self.finished = False
        self.sent_tokens = 0  # engine thread: tokens already sent
        self.sent_logprobs = 0

    def push(self, delta: Delta) -> None:
        """Engine thread -> event loop."""
        self._asyncio_loop.call_soon_threadsafe(self.queue.put_nowait, delta)

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
            self._engine_loop.commands.put(("abort", self))


class EngineLoop:
    """Owns the engine thread; ``submit`` and ``abort`` are safe from any thread."""

    def __init__(
        self, engine: Engine, on_finished: Sequence[Callable[[GenerationOutput], None]] = ()
    ) -> None:
        """``on_finished``: called in the engine thread with each request's final output (the
        metrics observe latencies there); must be quick and must not raise."""
        self.engine = engine
        self.on_finished = list(on_finished)
        self.commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.live: dict[int, RequestHandle] = {}
        self.stats: dict[str, Any] = engine.get_stats()
        self.stats_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vibe-sgl-lite-engine", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------------

    def submit(
        self, prompt: str | Sequence[int], params: SamplingParams, priority: int = 0
    ) -> RequestHandle:
        handle = RequestHandle(self, asyncio.get_running_loop())
        self.commands.put(("add", (handle, prompt, params, priority)))
        return handle

    def get_stats(self) -> dict[str, Any]:
        """The engine's statistics after its last step (a copy, safe from any thread)."""
        with self.stats_lock:
            return dict(self.stats)

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking requests, abort the running ones, join the thread."""
        self._stopping.set()
        self.commands.put(("stop", None))
        self._thread.join(timeout)

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            block = not self.engine.has_unfinished()
            try:
                while True:
                    kind, payload = self.commands.get(block=block, timeout=None)
                    block = False
                    if kind == "stop":
                        self._abort_all()
                        return
                    self._command(kind, payload)
            except queue.Empty:
                pass
            if self.engine.has_unfinished():
                self._step()

    def _command(self, kind: str, payload: Any) -> None:
        if kind == "add":
            handle, prompt, params, priority = payload
            if self._stopping.is_set():
                handle.push(Delta(error="the server is shutting down"))
                return
            try:
                handle.request = self.engine.add_request(prompt, params, priority)
            except ValueError as exc:
                handle.push(Delta(error=str(exc)))
                return
            self.live[handle.request.request_id] = handle
        elif kind == "abort":
            handle = payload
            req = handle.request
            if req is not None and self.live.pop(req.request_id, None) is not None:
                self.engine.abort(req)
                handle.push(Delta(output=self.engine.outputs.to_output(req)))

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception:  # a bug, not a bad request: fail what was running, keep serving
            message = traceback.format_exc(limit=3)
            for handle in list(self.live.values()):
                assert handle.request is not None
                self.engine.abort(handle.request)
                handle.push(Delta(error=f"internal error: {message}"))
            self.live.clear()
        self._publish()

    def _publish(self) -> None:
        """Send each live request what it produced in this step; retire the finished."""
        for request_id, handle in list(self.live.items()):
            req = handle.request
            assert req is not None
            delta = Delta(
                text=req.pending_text,
                token_ids=req.output_ids[handle.sent_tokens :],
                logprobs=req.logprobs[handle.sent_logprobs :],
            )
            req.pending_text = ""
            handle.sent_tokens += len(delta.token_ids)
            handle.sent_logprobs += len(delta.logprobs)
            if req.is_finished:
                delta.output = self.engine.outputs.to_output(req)
                del self.live[request_id]
                for listener in self.on_finished:
                    listener(delta.output)
            if delta.text or delta.token_ids or delta.output is not None:
                handle.push(delta)
        with self.stats_lock:
            self.stats = self.engine.get_stats()

    def _abort_all(self) -> None:
        for handle in list(self.live.values()):
            assert handle.request is not None
            self.engine.abort(handle.request)
            handle.push(Delta(output=self.engine.outputs.to_output(handle.request)))
        self.live.clear()
        with self.stats_lock:
            self.stats = self.engine.get_stats()
