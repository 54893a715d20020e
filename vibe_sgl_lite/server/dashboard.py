"""The live page and what it reads: ``GET /``, ``GET /v1/engine/state``, ``GET /metrics``.

    GET /                  static/index.html: a chat box streaming from /v1/chat/completions
                           and an engine panel polling /v1/engine/state every 500 ms
    GET /static/...        its script and style sheet (package files, no build step, no CDN)
    GET /v1/engine/state   JSON: requests, KV pages, prefix cache, tokens/s (behind the API key,
                           like every /v1/ path; the page has a field for the key)
    GET /metrics           Prometheus text (``metrics.py``); not behind the API key, as in vLLM

Everything here reads ``EngineLoop.get_stats()``, the copy the engine thread publishes (after
commands and steps; at most every 0.1 s while requests stream), so no handler touches the
engine itself: the engine stays single-threaded.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST

from vibe_sgl_lite.server.metrics import ServerMetrics, StatsSource

STATIC_DIR = Path(__file__).parent / "static"
RATE_WINDOW_S = 3.0


class TokenRate:
    """Generated tokens per second over the last ``window_s`` seconds.

    The engine counts tokens but keeps no clock of them; sampling its counter at each poll and
    differencing over a few seconds gives a rate without asking anything more of the engine
    thread, smoothed over the step-to-step jitter of one poll interval. The window starts at the
    newest sample at least ``window_s`` old, so polls further apart than that still get the
    rate since the previous one, not 0.
    """

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, int]] = deque()

    def update(self, tokens: int, now: float | None = None) -> float:
        """Record the counter's value ``tokens`` at ``now``; the rate since the window's start."""
        now = time.monotonic() if now is None else now
        self.samples.append((now, tokens))
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()
        start, start_tokens = self.samples[0]
        return (tokens - start_tokens) / (now - start) if now > start else 0.0


def engine_state(
    stats: Mapping[str, float], model_name: str, tokens_per_second: float
) -> dict[str, Any]:
    """The page's view of one stats snapshot: flat names, the KV pages split used/free."""
    total, free = int(stats["kv_pages_total"]), int(stats["kv_pages_free"])
    return {
        "model": model_name,
        "running_requests": int(stats["num_running_requests"]),
        "waiting_requests": int(stats["num_waiting_requests"]),
        "kv_pages_total": total,
        "kv_pages_free": free,
        "kv_pages_used": total - free,
        "page_size": int(stats["page_size"]),
        "prefix_cache_hit_rate": float(stats["cache_hit_rate"]),
        "cached_pages": int(stats["num_cached_pages"]),
        "radix_tree_nodes": int(stats.get("num_cache_nodes", 0)),  # 0 until the first step
        "tokens_per_second": tokens_per_second,
        "generated_tokens": int(stats["num_generated_tokens"]),
        "total_requests": int(stats["num_requests"]),
        "max_model_len": int(stats["max_model_len"]),
    }


def add_page_routes(
    app: FastAPI, stats: StatsSource, metrics: ServerMetrics, model_name: str
) -> None:
    """Register the page, its state and ``/metrics`` on ``app``. ``stats`` gives ``None`` until
    the lifespan has started the engine loop."""
    rate = TokenRate()

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/v1/engine/state", response_model=None)
    async def state() -> dict[str, Any] | JSONResponse:
        snapshot = stats()
        if snapshot is None:
            body = {"message": "the engine is not running", "type": "server_error"}
            return JSONResponse({"error": {**body, "param": None, "code": None}}, 503)
        tokens = int(snapshot["num_generated_tokens"])
        return engine_state(snapshot, model_name, rate.update(tokens))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
