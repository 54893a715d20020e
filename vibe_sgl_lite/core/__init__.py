"""The engine core: runner (public API), engine loop, output processing, executor, tokenizer."""

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.output import GenerationOutput
from vibe_sgl_lite.core.runner import BatchRequestError, ModelRunner
from vibe_sgl_lite.scheduler.request import Request, RequestState

__all__ = [
    "BatchRequestError",
    "EngineConfig",
    "GenerationOutput",
    "ModelRunner",
    "Request",
    "RequestState",
]
