"""The OpenAI-compatible HTTP server (``vibe-sgl-lite serve``): FastAPI handlers in the event
loop, the engine in one thread of its own (``engine_loop.py``)."""

from vibe_sgl_lite.server.app import create_app
from vibe_sgl_lite.server.engine_loop import EngineLoop
from vibe_sgl_lite.server.launch import serve

__all__ = ["EngineLoop", "create_app", "serve"]
