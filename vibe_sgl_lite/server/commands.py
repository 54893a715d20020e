"""The messages the event loop sends the engine thread, one dataclass per kind.

The engine thread reads them from one ``queue.Queue[Command]`` between steps and dispatches
on their type (``EngineLoop._handle``), so each kind carries exactly the fields it needs and a
new kind is a new class the type checker makes every dispatch handle.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.request_handle import RequestHandle

T = TypeVar("T")


@dataclass(frozen=True)
class AddRequest:
    """Queue ``prompt`` in the engine; ``handle`` learns whether it was admitted or refused."""

    handle: RequestHandle
    prompt: str | Sequence[int]
    params: SamplingParams
    priority: int = 0


@dataclass(frozen=True)
class AbortRequest:
    """The client went away: end ``handle``'s request and free its pages."""

    handle: RequestHandle


@dataclass(frozen=True)
class RunInEngineThread(Generic[T]):
    """Run ``fn(engine)`` between two steps; ``future`` gets its result or exception."""

    fn: Callable[[Engine], T]
    future: concurrent.futures.Future[T]

    def run(self, engine: Engine) -> None:
        try:
            self.future.set_result(self.fn(engine))
        except Exception as exc:
            self.future.set_exception(exc)


@dataclass(frozen=True)
class Stop:
    """Shut down: abort the live requests, refuse the queued ones, end the thread."""


Command = AddRequest | AbortRequest | RunInEngineThread[Any] | Stop
"""Every message the engine thread reads; ``RunInEngineThread``'s result type is the caller's."""
