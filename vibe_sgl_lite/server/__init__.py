"""The OpenAI-compatible HTTP server (``vibe-sgl-lite serve``): FastAPI handlers in the event
loop, the engine in one thread of its own.

    app.py              create_app: the context, the lifespan, the guard, errors, the routers
    completions.py      POST /v1/completions          chat.py   POST /v1/chat/completions
    generate.py         POST /generate                meta.py   GET /health, GET /v1/models
    streaming.py        the one SSE driver; each API only formats its choices
    submission.py       a body's requests into the engine loop and their outputs back
    context.py          what the routes read: the ``ServedModel`` and the ``EngineLoop``
    engine_loop.py      the engine thread; its messages (``commands.py``), a request's events
                        (``request_handle.py``)
    protocol.py         the request bodies         responses.py   the response shapes
    dashboard.py        the live page              metrics.py     Prometheus
    launch.py           ``serve``: uvicorn until SIGINT/SIGTERM
"""

from vibe_sgl_lite.server.app import create_app
from vibe_sgl_lite.server.engine_loop import EngineLoop
from vibe_sgl_lite.server.launch import serve

__all__ = ["EngineLoop", "create_app", "serve"]
