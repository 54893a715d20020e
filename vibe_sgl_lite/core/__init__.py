"""The engine core: runner (public API), engine loop, requests, config and tokenizer."""

from vibe_sgl_lite.core.config import EngineConfig
from vibe_sgl_lite.core.request import GenerationOutput, Request, RequestState
from vibe_sgl_lite.core.runner import BatchRequestError, ModelRunner

__all__ = [
    "BatchRequestError",
    "EngineConfig",
    "GenerationOutput",
    "ModelRunner",
    "Request",
    "RequestState",
]
