"""The HTTP server: OpenAI-compatible endpoints over one ``EngineLoop``, assembled.

    POST /v1/completions        text completion, streamed (SSE) or not     completions.py
    POST /v1/chat/completions   the model's chat template, then as above   chat.py
    GET  /v1/models             the model served and its LoRA adapters     meta.py
    POST /v1/load_lora_adapter, /v1/unload_lora_adapter   adapters at run time   lora.py
    GET  /health                200 while the engine thread runs           meta.py
    POST /generate              native: ``generate_outputs`` over HTTP     generate.py
    GET  /, /v1/engine/state, /metrics   the live page and Prometheus      dashboard.py
    /health_generate, /server_info, /model_info, /get_load, /v1/loads, /flush_cache,
    /version, /tokenize, /detokenize     what SGLang's gateway probes       worker_api.py

Streams are driven by ``streaming.py``; what every endpoint does with the engine loop
(admission, collecting outputs, their errors) is ``submission.py``. This module only puts the
app together: the context the routes read, the lifespan that runs the engine thread, the guard
in front of every request and the error handlers.

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
body or a request the engine refuses (the message names the field, also before a stream
starts), 401 for a missing or wrong API key, 404 for an unknown model or path, 405 for a wrong
method, 413 for a body over ``MAX_BODY_BYTES``, 500 for a failure inside the engine (a bug: the
server keeps serving), 503 once the server is shutting down.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.server import chat, completions, generate, lora, meta, worker_api
from vibe_sgl_lite.server.context import ServedModel, ServerContext
from vibe_sgl_lite.server.dashboard import add_page_routes
from vibe_sgl_lite.server.engine_loop import EngineLoop
from vibe_sgl_lite.server.metrics import ServerMetrics
from vibe_sgl_lite.server.reasoning import check_parser as check_reasoning_parser
from vibe_sgl_lite.server.responses import APIError, error_response
from vibe_sgl_lite.server.tool_parsers import check_parser as check_tool_call_parser

MAX_BODY_BYTES = 1 << 20
PROTECTED_PATHS = frozenset({"/generate", *worker_api.PROTECTED_WORKER_PATHS})


def create_app(
    runner: ModelRunner,
    model_name: str,
    api_key: str | None = None,
    *,
    reasoning_parser: str | None = None,
    tool_call_parser: str | None = None,
) -> FastAPI:
    """The app serving ``runner``'s engine as ``model_name``; it owns the engine thread.

    ``reasoning_parser`` (``qwen3``, ``deepseek-r1``) splits chat answers' ``<think>`` blocks
    into ``reasoning_content``; ``tool_call_parser`` (``hermes``, ``qwen``, ``llama3``) parses
    calls into ``tool_calls``; an unknown name is a ``ValueError`` naming the flag.
    ``app.state.engine_loop()`` is the running ``EngineLoop`` (for tests and benchmarks)."""
    check_reasoning_parser(reasoning_parser)
    check_tool_call_parser(tool_call_parser)
    engine = runner.engine
    assert engine is not None, "the runner is closed"
    served = ServedModel.of(engine, model_name, str(runner.model_path))
    context = ServerContext(
        dataclasses.replace(
            served, reasoning_parser=reasoning_parser, tool_call_parser=tool_call_parser
        ),
        {name: ref.path for name, ref in engine.loras.adapters.items()},
    )
    metrics = ServerMetrics(context.stats, model_name)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        context.start(EngineLoop(engine, on_finished=[metrics.observe]))
        yield
        context.engine_loop().shutdown()

    app = FastAPI(title="vibe-sgl-lite", lifespan=lifespan)
    app.state.context = context
    app.state.engine_loop = context.engine_loop
    add_page_routes(app, context.stats, metrics, model_name)
    for module in (meta, worker_api, completions, chat, generate, lora):
        app.include_router(module.router)
    _add_guard(app, api_key)
    _add_error_handlers(app)
    return app


def _add_guard(app: FastAPI, api_key: str | None) -> None:
    """Before any route: a body over ``MAX_BODY_BYTES`` is a 413 and, with ``api_key`` set,
    every ``/v1/`` path, ``/generate`` and the worker endpoints that carry text or change the
    engine (``PROTECTED_WORKER_PATHS``) need ``Authorization: Bearer <api_key>`` (401). The
    read-only probes (``/health``, ``/server_info``, ``/get_load``...) stay open, as ``/metrics``
    does: a gateway's health checks carry no key."""

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return error_response(413, f"request body must be at most {MAX_BODY_BYTES} bytes")
        path = request.url.path
        protected = path.startswith("/v1/") or path in PROTECTED_PATHS
        if api_key is not None and protected:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape: the body's validation, ``APIError`` and routing's own."""
    app.exception_handler(RequestValidationError)(_invalid_body)
    app.exception_handler(APIError)(_api_error)
    app.exception_handler(StarletteHTTPException)(_http_error)


async def _invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0]
    where = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(where) or None
    message = first.get("msg", "invalid request body").removeprefix("Value error, ")
    if first.get("type") == "json_invalid":
        return error_response(400, "the request body is not valid JSON")
    return error_response(400, f"{param}: {message}" if param else message, param)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return error_response(exc.status, exc.message, exc.param)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing's own errors (an unknown path: 404, a wrong method: 405 with its ``Allow``
    header) in OpenAI's shape too, instead of FastAPI's ``{"detail": ...}``."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    response = error_response(exc.status_code, message)
    response.headers.update(exc.headers or {})
    return response
