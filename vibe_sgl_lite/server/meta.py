"""``GET /health`` and ``GET /v1/models``: what a client or a load balancer asks first.

``/health`` answers 200 while the engine thread serves and 503 once it has stopped (shutdown,
or a crash); ``/v1/models`` lists the one model served, in OpenAI's shape.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from vibe_sgl_lite.server.context import Context
from vibe_sgl_lite.server.responses import error_response

router = APIRouter()


@router.get("/health", response_model=None)
async def health(context: Context) -> dict[str, str] | JSONResponse:
    if not context.engine_loop().is_alive():
        return error_response(503, "the engine thread is not running")
    return {"status": "ok"}


@router.get("/v1/models")
async def models(context: Context) -> dict[str, Any]:
    card = {"id": context.model.name, "object": "model", "created": 0, "owned_by": "vibe-sgl-lite"}
    return {"object": "list", "data": [card]}
