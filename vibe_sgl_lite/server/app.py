"""The HTTP server: OpenAI-compatible endpoints over one ``EngineLoop``.

    POST /v1/completions        text completion, streamed (SSE) or not
    POST /v1/chat/completions   the model's chat template, then as above
    GET  /v1/models             the one model served
    POST /generate              native: ``generate_outputs`` over HTTP
    GET  /health                200 while the engine thread runs

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
body or a request the engine refuses (the message names the field, also before a stream
starts), 401 for a missing or wrong API key, 404 for an unknown model, 413 for a body over
``MAX_BODY_BYTES``, 500 for a failure inside the engine (a bug: the server keeps serving), 503
once the server is shutting down.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from jinja2 import TemplateError
from starlette.exceptions import HTTPException as StarletteHTTPException

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.dashboard import add_page_routes
from vibe_sgl_lite.server.engine_loop import Delta, EngineLoop, RequestHandle
from vibe_sgl_lite.server.protocol import (
    ChatCompletionRequest,
    CommonFields,
    CompletionRequest,
    GenerateRequest,
)
from vibe_sgl_lite.server.responses import (
    CHAT_RENAMES,
    COMPLETION_RENAMES,
    APIError,
    bad_request,
    chat_logprobs,
    completion_logprobs,
    error_body,
    error_response,
    sse,
    stream_chunk,
    usage,
)

MAX_BODY_BYTES = 1 << 20
MAX_COMPLETIONS_LOGPROBS = 5


def create_app(runner: ModelRunner, model_name: str, api_key: str | None = None) -> FastAPI:
    """The app serving ``runner``'s engine as ``model_name``; it owns the engine thread."""
    engine = runner.engine
    assert engine is not None, "the runner is closed"
    state: dict[str, EngineLoop] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["loop"] = EngineLoop(engine, on_finished=[metrics.observe])
        yield
        state["loop"].shutdown()

    app = FastAPI(title="vibe-sgl-lite", lifespan=lifespan)

    def loop() -> EngineLoop:
        return state["loop"]

    metrics = add_page_routes(app, loop, model_name)  # GET /, /v1/engine/state, /metrics

    @app.middleware("http")
    async def guard(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return error_response(413, f"request body must be at most {MAX_BODY_BYTES} bytes")
        protected = request.url.path.startswith("/v1/") or request.url.path == "/generate"
        if api_key is not None and protected:
            given = request.headers.get("authorization", "")
            if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer KEY)")
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(where) or None
        message = first.get("msg", "invalid request body").removeprefix("Value error, ")
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        return error_response(400, f"{param}: {message}" if param else message, param)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        """Routing's own errors (an unknown path: 404, a wrong method: 405 with its ``Allow``
        header) in OpenAI's shape too, instead of FastAPI's ``{"detail": ...}``."""
        message = f"{request.method} {request.url.path}: {exc.detail}"
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})
        return response

    # ---- helpers -----------------------------------------------------------------------------

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404, f"model {name!r} does not exist; this server serves {model_name!r}", "model"
            )

    def params_for(
        body: CommonFields, max_tokens: int | None, logprobs: int | None, renames: dict[str, str]
    ) -> list[SamplingParams]:
        limit = engine.max_model_len
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            name = renames.get("max_tokens", "max_tokens")
            raise APIError(
                400, f"{name} must be an integer in [1, {limit}], got {max_tokens}", name
            )
        try:
            return [body.sampling_params(max_tokens or limit, logprobs, i) for i in range(body.n)]
        except ValueError as exc:
            raise bad_request(str(exc), renames) from None

    def failure(delta: Delta, renames: dict[str, str]) -> APIError:
        assert delta.error is not None
        if delta.status == 400:
            return bad_request(delta.error, renames)
        return APIError(delta.status, delta.error)

    async def start(
        prompts: list[str | list[int]], params: list[SamplingParams], renames: dict[str, str]
    ) -> list[RequestHandle]:
        """Queue one request per prompt and choice, all at once: they share every step.

        Waits until the engine has accepted them all and raises its first refusal as the HTTP
        error, so that a stream is only ever started for requests that will run.
        """
        handles = [loop().submit(prompt, p) for prompt in prompts for p in params]
        for handle in handles:
            refusal = await handle.admitted()
            if refusal is not None:
                for other in handles:
                    other.abort()
                raise failure(refusal, renames)
        return handles

    async def collect(
        handles: list[RequestHandle], request: Request, renames: dict[str, str]
    ) -> list[GenerationOutput]:
        """Each handle's final output, in order.

        A client that hangs up on a non-streamed request would otherwise only be noticed when
        the response is written, after the engine spent the request's whole ``max_tokens``:
        a watcher aborts the requests as soon as the ASGI server reports the disconnect.
        """
        watcher = asyncio.create_task(abort_on_disconnect(request, handles))
        outputs: list[GenerationOutput] = []
        try:
            for handle in handles:
                async for delta in handle.events():
                    if delta.error is not None:
                        raise failure(delta, renames)
                    if delta.output is not None:
                        outputs.append(delta.output)
        finally:
            watcher.cancel()
            for handle in handles:
                handle.abort()
        return outputs

    async def abort_on_disconnect(request: Request, handles: list[RequestHandle]) -> None:
        # The body has been read, so the next message can only be the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        for handle in handles:
            handle.abort()

    def check_finished(outputs: list[GenerationOutput]) -> None:
        """A request that failed inside the engine (a plugin raised on it) is a server error
        in the OpenAI API, whose finish reasons have no ``"error"``."""
        for out in outputs:
            if out.finish_reason == "error":
                raise APIError(500, f"internal error: {out.error}")

    def stream_failure(delta: Delta, renames: dict[str, str]) -> str | None:
        """The SSE error event that ends a stream (OpenAI's shape), if ``delta`` is a failure."""
        try:
            if delta.error is not None:
                raise failure(delta, renames)
            check_finished([delta.output] if delta.output is not None else [])
        except APIError as exc:
            return sse(error_body(exc.status, exc.message, exc.param))
        return None

    def token_text(token_id: int) -> str:
        return engine.tokenizer.decode([token_id], skip_special_tokens=False)

    # ---- endpoints ---------------------------------------------------------------------------

    @app.get("/health", response_model=None)
    async def health() -> Any:
        if not loop().is_alive():
            return error_response(503, "the engine thread is not running")
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        card = {"id": model_name, "object": "model", "created": 0, "owned_by": "vibe-sgl-lite"}
        return {"object": "list", "data": [card]}

    @app.post("/v1/completions", response_model=None)
    async def completions(body: CompletionRequest, request: Request) -> Any:
        check_model(body.model)
        if body.logprobs is not None and not 0 <= body.logprobs <= MAX_COMPLETIONS_LOGPROBS:
            raise APIError(
                400,
                f"logprobs must be an integer in [0, {MAX_COMPLETIONS_LOGPROBS}], got {body.logprobs}",
                "logprobs",
            )
        prompts = _prompts(body.prompt)
        params = params_for(body, body.max_tokens, body.logprobs, COMPLETION_RENAMES)
        created, rid = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
        handles = await start(prompts, params, COMPLETION_RENAMES)
        # choices are prompt-major: choice i completes prompt i // n; the engine has checked
        # the token ids by now (decoding one out of the vocabulary would raise)
        prefixes = [echo_text(prompt) if body.echo else "" for prompt in prompts for _ in params]
        if body.stream:
            return StreamingResponse(
                completion_stream(body, handles, prefixes, created, rid),
                media_type="text/event-stream",
            )
        outputs = await collect(handles, request, COMPLETION_RENAMES)
        check_finished(outputs)
        choices = []
        for index, (out, prefix) in enumerate(zip(outputs, prefixes)):
            logprobs = None
            if body.logprobs is not None and out.logprobs is not None:
                logprobs = completion_logprobs(out.logprobs, len(prefix), token_text)
            choices.append(
                {
                    "index": index,
                    "text": prefix + out.text,
                    "logprobs": logprobs,
                    "finish_reason": out.finish_reason,
                }
            )
        prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs[:: body.n])
        return {
            "id": rid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": usage(outputs, prompt_tokens),
        }

    def echo_text(prompt: str | list[int]) -> str:
        return prompt if isinstance(prompt, str) else engine.tokenizer.decode(prompt)

    async def completion_stream(
        body: CompletionRequest,
        handles: list[RequestHandle],
        prefixes: list[str],
        created: int,
        rid: str,
    ) -> AsyncIterator[str]:
        outputs: list[GenerationOutput] = []

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return stream_chunk("text_completion", rid, created, model_name, choices, **extra)

        try:
            for index, (handle, prefix) in enumerate(zip(handles, prefixes)):
                position = len(prefix)  # text_offset of the next token, as in the full text
                if prefix:
                    yield chunk(
                        [{"index": index, "text": prefix, "logprobs": None, "finish_reason": None}]
                    )
                async for delta in handle.events():
                    if (event := stream_failure(delta, COMPLETION_RENAMES)) is not None:
                        yield event
                        return
                    finish = delta.output.finish_reason if delta.output is not None else None
                    logprobs = None
                    if body.logprobs is not None and delta.logprobs:
                        logprobs = completion_logprobs(delta.logprobs, position, token_text)
                        position += sum(len(text) for text in logprobs["tokens"])
                    if delta.text or finish is not None or logprobs is not None:
                        choice = {
                            "index": index,
                            "text": delta.text,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }
                        yield chunk([choice])
                    if delta.output is not None:
                        outputs.append(delta.output)
            if body.stream_options is not None and body.stream_options.include_usage:
                prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs[:: body.n])
                yield chunk([], usage=usage(outputs, prompt_tokens))
            yield "data: [DONE]\n\n"
        finally:
            for handle in handles:
                handle.abort()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_field = "max_tokens" if body.max_completion_tokens is None else "max_completion_tokens"
        renames = {**CHAT_RENAMES, "max_tokens": max_field}
        max_tokens = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        )
        try:
            text = engine.tokenizer.apply_chat_template(
                [m.model_dump(exclude_none=True) for m in body.messages]
            )
        except (ValueError, TemplateError) as exc:  # no template, or its raise_exception(...)
            raise APIError(400, f"messages: {exc}", "messages") from None
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
        if max_tokens is None:  # up to the model's length, as OpenAI does
            max_tokens = max(1, min(engine.max_model_len - len(prompt), engine.max_model_len))
        params = params_for(body, max_tokens, logprobs, renames)
        created, rid = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
        handles = await start([prompt], params, renames)
        if body.stream:
            return StreamingResponse(
                chat_stream(body, handles, renames, created, rid), media_type="text/event-stream"
            )
        outputs = await collect(handles, request, renames)
        check_finished(outputs)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": (
                    chat_logprobs(out.logprobs, token_text)
                    if body.logprobs and out.logprobs is not None
                    else None
                ),
                "finish_reason": out.finish_reason,
            }
            for i, out in enumerate(outputs)
        ]
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": model_name,
            "choices": choices,
            "usage": usage(outputs, len(prompt)),
        }

    async def chat_stream(
        body: ChatCompletionRequest,
        handles: list[RequestHandle],
        renames: dict[str, str],
        created: int,
        rid: str,
    ) -> AsyncIterator[str]:
        outputs: list[GenerationOutput] = []

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> str:
            return stream_chunk("chat.completion.chunk", rid, created, model_name, choices, **extra)

        try:
            for index, handle in enumerate(handles):
                yield chunk(
                    [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": ""},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
                async for delta in handle.events():
                    if (event := stream_failure(delta, renames)) is not None:
                        yield event
                        return
                    finish = delta.output.finish_reason if delta.output is not None else None
                    logprobs = (
                        chat_logprobs(delta.logprobs, token_text)
                        if body.logprobs and delta.logprobs
                        else None
                    )
                    if delta.text or logprobs is not None:
                        yield chunk(
                            [
                                {
                                    "index": index,
                                    "delta": {"content": delta.text},
                                    "logprobs": logprobs,
                                    "finish_reason": None,
                                }
                            ]
                        )
                    if finish is not None:
                        yield chunk(
                            [
                                {
                                    "index": index,
                                    "delta": {},
                                    "logprobs": None,
                                    "finish_reason": finish,
                                }
                            ]
                        )
                    if delta.output is not None:
                        outputs.append(delta.output)
            if body.stream_options is not None and body.stream_options.include_usage:
                prompt_tokens = len(outputs[0].prompt_token_ids) if outputs else 0
                yield chunk([], usage=usage(outputs, prompt_tokens))
            yield "data: [DONE]\n\n"
        finally:
            for handle in handles:
                handle.abort()

    @app.post("/generate")
    async def generate(body: GenerateRequest, request: Request) -> list[dict[str, Any]]:
        """``generate_outputs`` over HTTP, refusals included: a prompt the engine refuses gets
        an output with ``finish_reason="error"`` and its message, and the others complete."""
        try:
            params = SamplingParams.from_kwargs(**body.sampling_params)
        except (ValueError, TypeError) as exc:
            raise APIError(400, f"sampling_params: {exc}", "sampling_params") from None
        prompts = _prompts(body.prompts)
        handles = [loop().submit(prompt, params) for prompt in prompts]
        refusals = [await handle.admitted() for handle in handles]
        server_side = [r for r in refusals if r is not None and r.status != 400]
        accepted = [h for h, r in zip(handles, refusals) if r is None]
        if server_side:
            for handle in accepted:
                handle.abort()
            raise failure(server_side[0], {})
        finished = iter(await collect(accepted, request, {}))
        outputs = [
            next(finished) if r is None else GenerationOutput.failed(_ids(p), str(r.error))
            for p, r in zip(prompts, refusals)
        ]
        return [asdict(out) for out in outputs]

    app.state.engine_loop = loop
    return app


def _ids(prompt: str | list[int]) -> list[int]:
    """A refused prompt's token ids as ``generate_outputs`` reports them (none for text)."""
    return [] if isinstance(prompt, str) else list(prompt)


def _prompts(prompt: str | list[int] | Sequence[str | list[int]]) -> list[str | list[int]]:
    """OpenAI's four prompt shapes as a list of prompts (a string or token ids each)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]
