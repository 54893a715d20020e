"""The HTTP server: OpenAI-compatible endpoints over one ``EngineLoop``.

    POST /v1/completions        text completion, streamed (SSE) or not
    POST /v1/chat/completions   the model's chat template, then as above
    GET  /v1/models             the one model served
    POST /generate              native: ``generate_outputs`` over HTTP
    GET  /health                200 while the engine thread runs

Errors are OpenAI-shaped, ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad
body (the message names the field), 401 for a missing or wrong API key, 404 for an unknown
model, 413 for a body over ``MAX_BODY_BYTES``.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams, TokenLogprobs
from vibe_sgl_lite.server.engine_loop import Delta, EngineLoop, RequestHandle
from vibe_sgl_lite.server.protocol import (
    ChatCompletionRequest,
    CommonFields,
    CompletionRequest,
    GenerateRequest,
)

MAX_BODY_BYTES = 1 << 20
MAX_COMPLETIONS_LOGPROBS = 5


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error"}.get(
        status, "invalid_request_error"
    )
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JSONResponse(body, status_code=status)


def _field_of(message: str) -> str | None:
    """``SamplingParams`` errors start with the field's name."""
    head = message.split(" ", 1)[0]
    return head if head.isidentifier() else None


def create_app(runner: ModelRunner, model_name: str, api_key: str | None = None) -> FastAPI:
    """The app serving ``runner``'s engine as ``model_name``; it owns the engine thread."""
    engine = runner.engine
    assert engine is not None, "the runner is closed"
    state: dict[str, EngineLoop] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state["loop"] = EngineLoop(engine)
        yield
        state["loop"].shutdown()

    app = FastAPI(title="vibe-sgl-lite", lifespan=lifespan)

    def loop() -> EngineLoop:
        return state["loop"]

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
        message = first.get("msg", "invalid request body")
        if first.get("type") == "json_invalid":
            return error_response(400, "the request body is not valid JSON")
        return error_response(400, f"{param}: {message}" if param else message, param)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.param)

    # ---- helpers -----------------------------------------------------------------------------

    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404, f"model {name!r} does not exist; this server serves {model_name!r}", "model"
            )

    def params_for(
        body: CommonFields, max_tokens: int | None, logprobs: int | None
    ) -> list[SamplingParams]:
        limit = engine.max_model_len
        if max_tokens is not None and not 1 <= max_tokens <= limit:
            raise APIError(
                400,
                f"max_tokens must be an integer in [1, {limit}], got {max_tokens}",
                "max_tokens",
            )
        try:
            return [body.sampling_params(max_tokens or limit, logprobs, i) for i in range(body.n)]
        except ValueError as exc:
            raise APIError(400, str(exc), _field_of(str(exc))) from None

    def start(prompts: list[str | list[int]], params: list[SamplingParams]) -> list[RequestHandle]:
        """Queue one request per prompt and choice, all at once: they share every step."""
        return [loop().submit(prompt, p) for prompt in prompts for p in params]

    async def collect(handles: list[RequestHandle]) -> list[GenerationOutput]:
        outputs: list[GenerationOutput] = []
        try:
            for handle in handles:
                async for delta in handle.events():
                    if delta.error is not None:
                        raise APIError(400, delta.error, _field_of(delta.error))
                    if delta.output is not None:
                        outputs.append(delta.output)
        finally:
            for handle in handles:
                handle.abort()
        return outputs

    def usage(outputs: list[GenerationOutput], prompt_tokens: int) -> dict[str, int]:
        completion = sum(len(o.token_ids) for o in outputs)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": prompt_tokens + completion,
        }

    def token_text(token_id: int) -> str:
        return engine.tokenizer.decode([token_id], skip_special_tokens=False)

    def completion_logprobs(items: list[TokenLogprobs], offset: int) -> dict[str, Any]:
        tokens = [token_text(lp.token_id) for lp in items]
        offsets, position = [], offset
        for text in tokens:
            offsets.append(position)
            position += len(text)
        return {
            "tokens": tokens,
            "token_logprobs": [lp.logprob for lp in items],
            "top_logprobs": [{token_text(t): v for t, v in lp.top} for lp in items],
            "text_offset": offsets,
        }

    def chat_logprobs(items: list[TokenLogprobs]) -> dict[str, Any]:
        def entry(token_id: int, logprob: float) -> dict[str, Any]:
            text = token_text(token_id)
            return {"token": text, "logprob": logprob, "bytes": list(text.encode())}

        return {
            "content": [
                {**entry(lp.token_id, lp.logprob), "top_logprobs": [entry(t, v) for t, v in lp.top]}
                for lp in items
            ]
        }

    def sse(data: dict[str, Any]) -> str:
        return f"data: {json.dumps(data)}\n\n"

    # ---- endpoints ---------------------------------------------------------------------------

    @app.get("/health")
    async def health() -> dict[str, str]:
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
        params = params_for(body, body.max_tokens, body.logprobs)
        created, rid = int(time.time()), f"cmpl-{secrets.token_hex(12)}"
        handles = start(prompts, params)
        if body.stream:
            return StreamingResponse(
                completion_stream(body, handles, created, rid), media_type="text/event-stream"
            )
        outputs = await collect(handles)
        choices = []
        for index, out in enumerate(outputs):  # prompt-major: choice i is prompt i // n
            prompt = prompts[index // body.n]
            prefix = ""
            if body.echo:
                prefix = prompt if isinstance(prompt, str) else engine.tokenizer.decode(prompt)
            logprobs = None
            if body.logprobs is not None and out.logprobs is not None:
                logprobs = completion_logprobs(out.logprobs, len(prefix))
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

    async def completion_stream(
        body: CompletionRequest, handles: list[RequestHandle], created: int, rid: str
    ) -> AsyncIterator[str]:
        outputs: list[GenerationOutput] = []
        try:
            for index, handle in enumerate(handles):
                async for delta in handle.events():
                    if delta.error is not None:
                        yield sse(
                            {
                                "error": {
                                    "message": delta.error,
                                    "type": "invalid_request_error",
                                    "param": _field_of(delta.error),
                                    "code": None,
                                }
                            }
                        )
                        return
                    finish = delta.output.finish_reason if delta.output is not None else None
                    logprobs = None
                    if body.logprobs is not None and delta.logprobs:
                        logprobs = completion_logprobs(delta.logprobs, 0)
                    if delta.text or finish is not None or logprobs is not None:
                        choice = {
                            "index": index,
                            "text": delta.text,
                            "logprobs": logprobs,
                            "finish_reason": finish,
                        }
                        yield sse(
                            {
                                "id": rid,
                                "object": "text_completion",
                                "created": created,
                                "model": model_name,
                                "choices": [choice],
                            }
                        )
                    if delta.output is not None:
                        outputs.append(delta.output)
            if body.stream_options is not None and body.stream_options.include_usage:
                prompt_tokens = sum(len(o.prompt_token_ids) for o in outputs[:: body.n])
                yield sse(
                    {
                        "id": rid,
                        "object": "text_completion",
                        "created": created,
                        "model": model_name,
                        "choices": [],
                        "usage": usage(outputs, prompt_tokens),
                    }
                )
            yield "data: [DONE]\n\n"
        finally:
            for handle in handles:
                handle.abort()

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(body: ChatCompletionRequest) -> Any:
        check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs=true", "top_logprobs")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = (
            body.max_completion_tokens
            if body.max_completion_tokens is not None
            else body.max_tokens
        )
        try:
            text = engine.tokenizer.apply_chat_template(
                [m.model_dump(exclude_none=True) for m in body.messages]
            )
        except ValueError as exc:
            raise APIError(400, f"messages: {exc}", "messages") from None
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
        if max_tokens is None:  # up to the model's length, as OpenAI does
            max_tokens = max(1, min(engine.max_model_len - len(prompt), engine.max_model_len))
        params = params_for(body, max_tokens, logprobs)
        created, rid = int(time.time()), f"chatcmpl-{secrets.token_hex(12)}"
        handles = start([prompt], params)
        if body.stream:
            return StreamingResponse(
                chat_stream(body, handles, created, rid), media_type="text/event-stream"
            )
        outputs = await collect(handles)
        choices = [
            {
                "index": i,
                "message": {"role": "assistant", "content": out.text},
                "logprobs": (
                    chat_logprobs(out.logprobs)
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
        body: ChatCompletionRequest, handles: list[RequestHandle], created: int, rid: str
    ) -> AsyncIterator[str]:
        outputs: list[GenerationOutput] = []

        def chunk(choice: dict[str, Any]) -> str:
            return sse(
                {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model_name,
                    "choices": [choice],
                }
            )

        try:
            for index, handle in enumerate(handles):
                yield chunk(
                    {
                        "index": index,
                        "delta": {"role": "assistant", "content": ""},
                        "logprobs": None,
                        "finish_reason": None,
                    }
                )
                async for delta in handle.events():
                    if delta.error is not None:
                        yield sse(
                            {
                                "error": {
                                    "message": delta.error,
                                    "type": "invalid_request_error",
                                    "param": _field_of(delta.error),
                                    "code": None,
                                }
                            }
                        )
                        return
                    finish = delta.output.finish_reason if delta.output is not None else None
                    logprobs = (
                        chat_logprobs(delta.logprobs) if body.logprobs and delta.logprobs else None
                    )
                    if delta.text or logprobs is not None:
                        yield chunk(
                            {
                                "index": index,
                                "delta": {"content": delta.text},
                                "logprobs": logprobs,
                                "finish_reason": None,
                            }
                        )
                    if finish is not None:
                        yield chunk(
                            {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
                        )
                    if delta.output is not None:
                        outputs.append(delta.output)
            if body.stream_options is not None and body.stream_options.include_usage:
                prompt_tokens = len(outputs[0].prompt_token_ids) if outputs else 0
                yield sse(
                    {
                        "id": rid,
                        "object": "chat.completion.chunk",
                        "created": created,
                        "model": model_name,
                        "choices": [],
                        "usage": usage(outputs, prompt_tokens),
                    }
                )
            yield "data: [DONE]\n\n"
        finally:
            for handle in handles:
                handle.abort()

    @app.post("/generate")
    async def generate(body: GenerateRequest) -> list[dict[str, Any]]:
        try:
            params = SamplingParams.from_kwargs(**body.sampling_params)
        except (ValueError, TypeError) as exc:
            raise APIError(400, str(exc), _field_of(str(exc))) from None
        outputs = await collect(start(_prompts(body.prompts), [params]))
        return [asdict(out) for out in outputs]

    app.state.engine_loop = loop
    return app


def _prompts(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    """OpenAI's four prompt shapes as a list of prompts (a string or token ids each)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise APIError(400, "prompt must not be empty", "prompt")
    if all(isinstance(p, int) for p in prompt):
        return [list(prompt)]  # type: ignore[arg-type]
    return list(prompt)  # type: ignore[arg-type]
