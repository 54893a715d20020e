"""``serve``: load the model, build the app, run uvicorn until SIGINT/SIGTERM.

uvicorn's own signal handling gives the graceful shutdown: it stops accepting connections,
lets open responses finish for up to ``GRACEFUL_SHUTDOWN_S`` seconds, then the app's lifespan
aborts whatever still runs and joins the engine thread. uvicorn then re-raises the signal it
caught through the handler that was installed before it; ``serve`` installs a quiet one for
SIGINT and SIGTERM, so a requested shutdown ends in exit status 0, not a traceback or a kill.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import uvicorn

from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.server.app import create_app
from vibe_sgl_lite.server.reasoning import check_parser as check_reasoning_parser
from vibe_sgl_lite.server.tool_parsers import check_parser as check_tool_call_parser

API_KEY_ENV = "VIBE_SGL_LITE_API_KEY"
GRACEFUL_SHUTDOWN_S = 10


def serve(
    model_path: str | Path | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 30000,
    api_key: str | None = None,
    served_model_name: str | None = None,
    reasoning_parser: str | None = None,
    tool_call_parser: str | None = None,
    **settings: Any,
) -> int:
    """Serve ``model_path`` (default: the bundled model) until interrupted; returns 0."""
    check_reasoning_parser(reasoning_parser)  # before the model loads
    check_tool_call_parser(tool_call_parser)
    with ModelRunner(model_path, **settings) as runner:
        name = served_model_name or runner.model_path.name
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV) or None
        app = create_app(
            runner,
            name,
            key,
            reasoning_parser=reasoning_parser,
            tool_call_parser=tool_call_parser,
        )
        config = uvicorn.Config(
            app, host=host, port=port, timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S
        )
        previous = {s: signal.signal(s, _quiet) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            uvicorn.Server(config).run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    return 0


def _quiet(signum: int, frame: object) -> None:
    """Re-raised by uvicorn after its graceful shutdown: nothing left to do."""
