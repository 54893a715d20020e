"""LoRA adapters over HTTP, as vLLM serves them.

    POST /v1/load_lora_adapter    {"lora_name": "sql", "lora_path": "/adapters/sql"}
    POST /v1/unload_lora_adapter  {"lora_name": "sql"}

A loaded adapter is a model: a body's ``"model": "sql"`` runs the base under it
(``ServerContext.model_for``), and ``/v1/models`` lists it. Loading checks the folder against
the base (a bad folder, a rank above ``--max-lora-rank``, another base's adapter: 400 naming
it); unloading an unknown name is a 404, and one that unfinished requests use is refused (400)
until they finish. Both run in the engine thread between two steps, so no step sees half a
change; they are ``/v1/`` paths, so ``--api-key`` guards them.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict

from vibe_sgl_lite.core.lora import UnknownAdapterError
from vibe_sgl_lite.server.context import Context
from vibe_sgl_lite.server.responses import APIError

router = APIRouter()


class LoadLoRA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str
    lora_path: str


class UnloadLoRA(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lora_name: str


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(body: LoadLoRA, context: Context) -> dict[str, str]:
    if body.lora_name == context.model.name:
        raise APIError(400, f"lora_name {body.lora_name!r} is the base model's name", "lora_name")
    future = context.engine_loop().call(lambda e: e.load_lora(body.lora_name, body.lora_path))
    try:
        await asyncio.wrap_future(future)
    except ValueError as exc:
        param = "lora_name" if str(exc).startswith("lora_name") else "lora_path"
        raise APIError(400, str(exc), param) from None
    context.adapters[body.lora_name] = body.lora_path
    return {"status": "ok", "lora_name": body.lora_name}


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(body: UnloadLoRA, context: Context) -> dict[str, str]:
    future = context.engine_loop().call(lambda e: e.unload_lora(body.lora_name))
    try:
        await asyncio.wrap_future(future)
    except UnknownAdapterError as exc:
        raise APIError(404, str(exc), "lora_name") from None
    except ValueError as exc:
        raise APIError(400, str(exc), "lora_name") from None
    context.adapters.pop(body.lora_name, None)
    return {"status": "ok", "lora_name": body.lora_name}
