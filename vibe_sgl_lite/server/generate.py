"""``POST /generate``: the Python API's ``generate_outputs`` over HTTP, one ``GenerationOutput``
(as JSON) per prompt, in order. Only a refusal that is the server's fault (500, 503) fails the
whole request; the route's docstring is its OpenAPI description.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Request

from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.server.context import Context
from vibe_sgl_lite.server.protocol import GenerateRequest
from vibe_sgl_lite.server.responses import APIError
from vibe_sgl_lite.server.submission import Prompt, abort_all, collect, failure, prompts_of

router = APIRouter()


@router.post("/generate")
async def generate(
    body: GenerateRequest, request: Request, context: Context
) -> list[dict[str, Any]]:
    """``generate_outputs`` over HTTP, refusals included: a prompt the engine refuses gets
    an output with ``finish_reason="error"`` and its message, and the others complete."""
    try:
        params = SamplingParams.from_kwargs(**body.sampling_params)
    except (ValueError, TypeError) as exc:
        raise APIError(400, f"sampling_params: {exc}", "sampling_params") from None
    prompts = prompts_of(body.prompts)
    loop = context.engine_loop()
    handles = [loop.submit(prompt, params) for prompt in prompts]
    refusals = [await handle.admitted() for handle in handles]
    server_side = [r for r in refusals if r is not None and r.status != 400]
    accepted = [h for h, r in zip(handles, refusals) if r is None]
    if server_side:
        abort_all(accepted)
        raise failure(server_side[0], {})
    finished = iter(await collect(accepted, request, {}))
    outputs = [
        next(finished) if r is None else GenerationOutput.failed(_ids(p), str(r.error))
        for p, r in zip(prompts, refusals)
    ]
    return [asdict(out) for out in outputs]


def _ids(prompt: Prompt) -> list[int]:
    """A refused prompt's token ids as ``generate_outputs`` reports them (none for text)."""
    return [] if isinstance(prompt, str) else list(prompt)
