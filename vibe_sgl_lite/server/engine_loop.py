"""``EngineLoop``: the synchronous engine in one thread, async HTTP handlers in the event loop.

    event loop (FastAPI handlers)                 engine thread
    ─────────────────────────────                 ───────────────────────────────────────
    handle = await loop.submit(prompt, params) ─► AddRequest ───────► Engine.add_request
                                                                    (ValueError -> error event)
    async for event in handle.events():       ◄── call_soon_threadsafe(queue.put_nowait, ...)
                                                  after every Engine.step: each live request's
                                                  new text and tokens; a final event when done
    handle.abort()  (client went away)        ─► AbortRequest ─────► Engine.abort (pages freed)
    loop.call(fn)   (flush the cache, ...)    ─► RunInEngineThread ► fn(engine) between steps

The engine is only ever touched by its thread, so it needs no lock; handlers never block the
event loop (they await their request's ``asyncio.Queue``). A step that raises fails the
requests in it, never the thread: the server keeps serving. The messages are typed
(``commands.py``); a request's side of the conversation is its ``RequestHandle``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar, assert_never

from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.lora import UnknownAdapterError
from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.commands import (
    AbortRequest,
    AddRequest,
    Command,
    RunInEngineThread,
    Stop,
)
from vibe_sgl_lite.server.request_handle import Delta, RequestHandle

logger = logging.getLogger(__name__)
T = TypeVar("T")

Stats = dict[str, float | int]
"""``Engine.get_stats()`` and the prefix tree's node count: the snapshot other threads read."""


def kv_usage(stats: Mapping[str, float]) -> float:
    """Share of the KV pool that requests hold, in [0, 1]: pages neither free nor evictable.

    A page the prefix cache keeps but no request uses is evicted as soon as a request needs
    room, so it counts as available, as in SGLang (``token_usage``) and vLLM
    (``kv_cache_usage_perc``). A gateway that read those pages as used would see an idle
    replica with a warm cache as full, and route away from the very cache it is after.
    """
    total = int(stats["kv_pages_total"])
    held = total - int(stats["kv_pages_free"]) - int(stats.get("num_evictable_pages", 0))
    return max(0, held) / total if total else 0.0


STATS_INTERVAL_S = 0.1
"""How often, at most, streaming requests refresh the published statistics."""


class EngineLoop:
    """Owns the engine thread; ``submit`` and ``abort`` are safe from any thread."""

    def __init__(
        self, engine: Engine, on_finished: Sequence[Callable[[GenerationOutput], None]] = ()
    ) -> None:
        """``on_finished``: called in the engine thread with each request's final output (the
        metrics observe latencies there); must be quick and must not raise."""
        self.engine = engine
        self.on_finished = list(on_finished)
        self.commands: queue.Queue[Command] = queue.Queue()
        self.live: dict[int, RequestHandle] = {}
        self.stats_lock = threading.Lock()
        self.stats: Stats = {}
        self._stats_time = 0.0
        self._refresh_stats(force=True)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vibe-sgl-lite-engine", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------------

    def submit(
        self, prompt: str | Sequence[int], params: SamplingParams, priority: int = 0
    ) -> RequestHandle:
        handle = RequestHandle(asyncio.get_running_loop(), self._send_abort)
        if self._thread.is_alive():
            self.commands.put(AddRequest(handle, prompt, params, priority))
        else:  # nobody would ever answer: refuse now rather than hang the client
            handle.admit(Delta(error="the engine is not running", status=503))
        return handle

    def _send_abort(self, handle: RequestHandle) -> None:
        self.commands.put(AbortRequest(handle))

    def call(self, fn: Callable[[Engine], T]) -> concurrent.futures.Future[T]:
        """Run ``fn(engine)`` in the engine thread between two steps, the only place the engine
        may be touched (flushing the prefix cache, a read that must see one consistent state);
        the future holds its result or exception."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self.commands.put(RunInEngineThread(fn, future))
        return future

    def get_stats(self) -> Stats:
        """The engine's statistics after its last step or command (a copy, safe from any
        thread)."""
        with self.stats_lock:
            return dict(self.stats)

    def is_alive(self) -> bool:
        """Whether the engine thread still serves (``/health``)."""
        return self._thread.is_alive() and not self._stopping.is_set()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop taking requests, abort the running ones, join the thread."""
        self._stopping.set()
        self.commands.put(Stop())
        self._thread.join(timeout)

    # ---- engine thread -----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException:  # a bug in this loop: fail loudly rather than hang every client
            logger.exception("the engine thread died")
            self._fail_live("internal error: the engine thread died")
            raise

    def _serve(self) -> None:
        while True:
            block = not self.engine.has_unfinished()
            handled = False
            try:
                while True:
                    command = self.commands.get(block=block, timeout=None)
                    block, handled = False, True
                    if not self._handle(command):
                        return
            except queue.Empty:
                pass
            if self.engine.has_unfinished():
                self._step()
            elif handled:  # an abort or a call changed the engine with no step to publish it
                self._refresh_stats()

    def _handle(self, command: Command) -> bool:
        """Carry out one message; ``False`` once it was ``Stop`` (the thread ends)."""
        match command:
            case AddRequest():
                self._add(command)
            case AbortRequest(handle=handle):
                req = handle.request
                if req is not None and self.live.pop(req.request_id, None) is not None:
                    self._abort(handle)
                    self._refresh_stats(force=True)
            case RunInEngineThread():
                command.run(self.engine)
            case Stop():
                self._abort_all()
                self._refuse_queued()
                return False
            case _:
                assert_never(command)
        return True

    def _add(self, command: AddRequest) -> None:
        handle = command.handle
        if self._stopping.is_set():
            handle.admit(Delta(error="the server is shutting down", status=503))
            return
        try:
            req = self.engine.add_request(command.prompt, command.params, command.priority)
        except UnknownAdapterError as exc:  # unloaded after the route checked the name
            handle.admit(Delta(error=str(exc), status=404))
            return
        except ValueError as exc:
            handle.admit(Delta(error=str(exc)))
            return
        except Exception as exc:  # a bug in validation, not a bad request: keep serving
            logger.exception("add_request failed")
            handle.admit(Delta(error=f"internal error: {exc!r}", status=500))
            return
        handle.request = req
        self.live[req.request_id] = handle
        handle.admit(None)

    def _step(self) -> None:
        try:
            self.engine.step()
        except Exception as exc:  # a bug, not a bad request: fail what was running, keep serving
            logger.exception("engine step failed; failing the %d running requests", len(self.live))
            for handle in self.live.values():
                assert handle.request is not None
                self.engine.abort(handle.request)
            self._fail_live(f"internal error: {exc!r}")
        self._publish()

    def _publish(self) -> None:
        """Send each live request what it produced in this step; retire the finished.

        The statistics are refreshed before the events go out, so a client that reads them
        after its answer never sees its own request still running."""
        events: list[tuple[RequestHandle, Delta]] = []
        for request_id, handle in list(self.live.items()):
            req = handle.request
            assert req is not None
            delta = Delta(
                text=req.take_text(),
                token_ids=req.output_ids[handle.sent_tokens :],
                logprobs=req.logprobs[handle.sent_logprobs :],
            )
            handle.sent_tokens += len(delta.token_ids)
            handle.sent_logprobs += len(delta.logprobs)
            if req.is_finished:
                delta.output = self.engine.outputs.to_output(req)
                del self.live[request_id]
                self._notify(delta.output)
            if delta.text or delta.token_ids or delta.output is not None:
                events.append((handle, delta))
        self._refresh_stats(force=any(d.output is not None for _, d in events))
        for handle, delta in events:
            handle.push(delta)

    def _notify(self, output: GenerationOutput) -> None:
        """The ``on_finished`` listeners; one that raises is logged, not allowed to stop the
        engine thread that every request depends on."""
        for listener in self.on_finished:
            try:
                listener(output)
            except Exception:
                logger.exception("on_finished listener %r failed", listener)

    def _refresh_stats(self, force: bool = False) -> None:
        """Publish the engine's statistics for other threads. Reading them walks the prefix
        tree, so while requests stream it happens at most every ``STATS_INTERVAL_S``, and at
        once when a request ends or the engine goes idle."""
        now = time.monotonic()
        idle = not self.engine.has_unfinished()
        if not (force or idle or now - self._stats_time >= STATS_INTERVAL_S):
            return
        self._stats_time = now
        with self.stats_lock:
            self.stats = {**self.engine.get_stats(), "num_cache_nodes": self.engine.cache.num_nodes}

    def _fail_live(self, message: str) -> None:
        """End every live request's event stream with an internal error (HTTP 500)."""
        for handle in self.live.values():
            handle.push(Delta(error=message, status=500))
        self.live.clear()

    def _refuse_queued(self) -> None:
        """At shutdown: requests still in the command queue are refused, never left waiting."""
        while True:
            try:
                command = self.commands.get_nowait()
            except queue.Empty:
                return
            if isinstance(command, AddRequest):
                command.handle.admit(Delta(error="the server is shutting down", status=503))
            elif isinstance(command, RunInEngineThread):
                command.future.cancel()

    def _abort_all(self) -> None:
        for handle in list(self.live.values()):
            self._abort(handle)
        self.live.clear()
        self._refresh_stats(force=True)

    def _abort(self, handle: RequestHandle) -> None:
        """End a live request early (pages freed); its final output, ``finish_reason="abort"``,
        goes to the listeners (the metrics count it) and to its handler."""
        assert handle.request is not None
        self.engine.abort(handle.request)
        output = self.engine.outputs.to_output(handle.request)
        self._notify(output)
        handle.push(Delta(output=output))
