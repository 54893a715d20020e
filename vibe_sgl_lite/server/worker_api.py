"""The endpoints an SGLang worker answers, so SGLang's model gateway (``smg``) can drive us.

A gateway in front of several replicas asks each one what it serves and how busy it is before
it routes; a worker that answers 404 is treated as a generic backend. These routes answer with
SGLang's shapes (and vLLM's for ``/tokenize``, ``/detokenize``, ``/tokenizer_info``):

    GET      /health_generate            one greedy token through the engine: 200, or 503
    GET      /server_info, /get_server_info   the engine's settings, limits and version
    GET      /model_info, /get_model_info     model and tokenizer paths, ``is_generation``
    GET      /get_load                    ``[{"dp_rank", "num_reqs", "num_waiting_reqs",
                                          "num_tokens"}]``, one entry per data-parallel rank
    GET      /v1/loads                    ``{"timestamp", "version", "dp_rank_count", "loads"}``
    GET|POST /flush_cache                 empty the prefix cache; 400 while requests run
    GET      /version                     ``{"version"}``
    POST     /tokenize, /detokenize       text to token ids and back (vLLM's bodies)
    GET      /tokenizer_info              the tokenizer's class, special tokens and chat template

Everything but ``/health_generate`` and ``/flush_cache`` reads the engine's published
statistics or the fixed ``ServedModel``, never the engine itself. The three tokenizer routes are
what lm-evaluation-harness's ``local-completions`` probes: with them it tokenizes through the
server (``tokenizer_backend="remote"``, its default when they answer) and needs no local copy
of the tokenizer (``docs/evaluation.md``). ``PROTECTED_WORKER_PATHS``
(text in or out, or a change to the engine) are behind the API key like ``/v1/``; the read-only
probes are not, as ``/health`` and ``/metrics``.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from vibe_sgl_lite import __version__
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.context import Context, ServerContext
from vibe_sgl_lite.server.engine_loop import Stats, kv_usage
from vibe_sgl_lite.server.protocol import Int64
from vibe_sgl_lite.server.responses import APIError, error_response

HEALTH_GENERATE_TIMEOUT_S = 20.0
"""How long ``/health_generate`` waits for its one token (SGLang's default)."""

PROTECTED_WORKER_PATHS = frozenset({"/flush_cache", "/tokenize", "/detokenize", "/tokenizer_info"})

router = APIRouter()


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize`` body (the completion form): a text prompt."""

    model_config = ConfigDict(extra="forbid")
    prompt: str
    add_special_tokens: StrictBool = True
    model: str | None = None


class DetokenizeRequest(BaseModel):
    """vLLM's ``/detokenize`` body: token ids."""

    model_config = ConfigDict(extra="forbid")
    tokens: list[Int64] = Field(min_length=1)
    model: str | None = None


def _stats(context: ServerContext) -> Stats:
    """The published statistics, or a 503 once the engine thread has stopped (or before)."""
    stats = context.stats()
    if stats is None or not context.engine_loop().is_alive():
        raise APIError(503, "the engine is not running")
    return stats


@router.get("/health_generate", response_model=None)
async def health_generate(context: Context) -> Response:
    """Generate one greedy token from a one-token prompt; 200 once it comes back, 503 when
    the engine refuses it, fails it, or takes longer than ``HEALTH_GENERATE_TIMEOUT_S``."""
    loop = context.engine_loop()
    if not loop.is_alive():
        return error_response(503, "the engine thread is not running")
    handle = loop.submit([0], SamplingParams(max_tokens=1, temperature=0.0))

    async def one_token() -> str | None:
        refusal = await handle.admitted()
        if refusal is not None:
            return refusal.error
        async for delta in handle.events():
            if delta.error is not None:
                return delta.error
        return None

    try:
        error = await asyncio.wait_for(one_token(), HEALTH_GENERATE_TIMEOUT_S)
    except asyncio.TimeoutError:
        error = f"no token within {HEALTH_GENERATE_TIMEOUT_S:g} s"
    finally:
        handle.abort()
    if error is not None:
        return error_response(503, f"health check failed: {error}")
    return Response(status_code=200)


@router.get("/server_info")
@router.get("/get_server_info")
async def server_info(context: Context) -> dict[str, Any]:
    """SGLang's shape: the server's arguments, the scheduler's limits, its internal state per
    data-parallel rank and the version. The KV pool size is known once the engine runs."""
    stats = _stats(context)
    model = context.model
    pool_tokens = int(stats["kv_pages_total"]) * int(stats["page_size"])
    return {
        **model.settings,
        "model_path": model.model_path,
        "tokenizer_path": model.model_path,
        "served_model_name": model.name,
        "dp_size": 1,
        "max_total_num_tokens": pool_tokens,
        "max_req_input_len": model.max_model_len - 1,
        "context_length": model.max_model_len,
        "internal_states": [{"load": int(stats["num_running_requests"]), **stats}],
        "version": __version__,
    }


@router.get("/model_info")
@router.get("/get_model_info")
async def model_info(context: Context) -> dict[str, Any]:
    model = context.model
    return {
        "model_path": model.model_path,
        "tokenizer_path": model.model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "served_model_name": model.name,
    }


@router.get("/get_load")
async def get_load(context: Context) -> list[dict[str, int]]:
    """One entry per data-parallel rank (one here): requests held and the KV tokens they hold
    (the prefix cache's evictable pages count as free, as in SGLang)."""
    stats = _stats(context)
    running, waiting = int(stats["num_running_requests"]), int(stats["num_waiting_requests"])
    used_pages = round(kv_usage(stats) * int(stats["kv_pages_total"]))
    return [
        {
            "dp_rank": 0,
            "num_reqs": running + waiting,
            "num_waiting_reqs": waiting,
            "num_tokens": used_pages * int(stats["page_size"]),
        }
    ]


@router.get("/v1/loads")
async def loads(context: Context) -> dict[str, Any]:
    """The gateway's load poll: per rank, running and waiting requests and the KV pool's use."""
    stats = _stats(context)
    page_size, total = int(stats["page_size"]), int(stats["kv_pages_total"])
    usage = kv_usage(stats)
    load = {
        "dp_rank": 0,
        "num_running_reqs": int(stats["num_running_requests"]),
        "num_waiting_reqs": int(stats["num_waiting_requests"]),
        "num_total_reqs": int(stats["num_running_requests"] + stats["num_waiting_requests"]),
        "num_used_tokens": round(usage * total) * page_size,
        "max_total_num_tokens": total * page_size,
        "token_usage": usage,
        "cache_hit_rate": float(stats["cache_hit_rate"]),
    }
    return {
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "version": __version__,
        "dp_rank_count": 1,
        "loads": [load],
    }


def _flush(engine: Engine) -> bool:
    """In the engine thread: empty the prefix cache unless a request still holds pages."""
    if engine.has_unfinished():
        return False
    engine.cache.flush()
    return True


@router.get("/flush_cache", response_class=PlainTextResponse, operation_id="flush_cache_get")
@router.post("/flush_cache", response_class=PlainTextResponse, operation_id="flush_cache_post")
async def flush_cache(context: Context) -> PlainTextResponse:
    """SGLang answers text: 200 once flushed, 400 while requests are running or waiting."""
    loop = context.engine_loop()
    if not loop.is_alive():
        return PlainTextResponse("The engine is not running.\n", 503)
    if await asyncio.wrap_future(loop.call(_flush)):
        return PlainTextResponse("Cache flushed.\n", 200)
    message = "Cache not flushed: requests are running or waiting; try again when idle.\n"
    return PlainTextResponse(message, 400)


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}


@router.post("/tokenize")
async def tokenize(body: TokenizeRequest, context: Context) -> dict[str, Any]:
    model = context.model if body.model is None else context.model_for(body.model)
    tokens = model.tokenizer.encode(body.prompt, add_special_tokens=body.add_special_tokens)
    return {"tokens": tokens, "count": len(tokens), "max_model_len": model.max_model_len}


@router.post("/detokenize", response_model=None)
async def detokenize(body: DetokenizeRequest, context: Context) -> dict[str, str] | JSONResponse:
    model = context.model if body.model is None else context.model_for(body.model)
    bad = [t for t in body.tokens if not 0 <= t < model.vocab_size]
    if bad:
        message = f"tokens: ids must be in [0, {model.vocab_size}), got {bad[0]}"
        return error_response(400, message, "tokens")
    return {"prompt": model.tokenizer.decode(list(body.tokens))}


def _token_text(token: object) -> str | None:
    """A special token as text: transformers keeps some as ``AddedToken`` objects."""
    return None if token is None else str(token)


@router.get("/tokenizer_info")
async def tokenizer_info(context: Context) -> dict[str, Any]:
    """vLLM's ``/tokenizer_info``: the tokenizer's class and the settings a client needs to
    tokenize as the server does. lm-evaluation-harness reads ``eos_token`` (its stop token for
    ``generate_until``) and ``chat_template``; vLLM sends the whole ``init_kwargs``, of which
    these are the fields with a meaning outside transformers."""
    hf = context.model.tokenizer.hf
    info: dict[str, Any] = {
        "tokenizer_class": type(hf).__name__,
        "eos_token": _token_text(hf.eos_token),
        "bos_token": _token_text(hf.bos_token),
        "pad_token": _token_text(hf.pad_token),
        "unk_token": _token_text(hf.unk_token),
        "model_max_length": context.model.max_model_len,
    }
    if isinstance(hf.chat_template, str):
        info["chat_template"] = hf.chat_template
    return info
