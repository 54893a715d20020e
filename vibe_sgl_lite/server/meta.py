"""``GET /health`` and ``GET /v1/models``: what a client or a load balancer asks first.

``/health`` answers 200 while the engine thread serves and 503 once it has stopped (shutdown,
or a crash); ``/v1/models`` lists the one model served, in OpenAI's shape with SGLang's extra
fields (``root``: the model's path, ``max_model_len``). Its ``owned_by`` is ``"sglang"``, as
SGLang's own server says: SGLang's model gateway reads that field to tell an SGLang worker from a
vLLM one (it would otherwise take our ``/version`` for vLLM's), and an SGLang worker is what
``worker_api.py`` answers as (``docs/scaling.md``).
It also lists each LoRA adapter served (vLLM's cards: ``parent`` is the base model, ``root``
the adapter's folder).
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
    model = context.model
    card = {
        "id": model.name,
        "object": "model",
        "created": 0,
        "owned_by": "sglang",
        "root": model.model_path or model.name,
        "max_model_len": model.max_model_len,
    }
    adapters = [
        {**card, "id": name, "parent": model.name, "root": path}
        for name, path in context.adapters.items()
    ]
    return {"object": "list", "data": [card, *adapters]}
