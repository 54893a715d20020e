"""The engine core: runner (public API), engine loop, output processing, executor, tokenizer.

Names are imported on first use (PEP 562): importing a submodule such as ``core.runner``
does not drag in the others first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vibe_sgl_lite.config import EngineConfig
    from vibe_sgl_lite.core.output import GenerationOutput
    from vibe_sgl_lite.core.runner import BatchRequestError, ModelRunner
    from vibe_sgl_lite.scheduler.request import Request, RequestState

_HOMES = {
    "BatchRequestError": "vibe_sgl_lite.core.runner",
    "EngineConfig": "vibe_sgl_lite.config",
    "GenerationOutput": "vibe_sgl_lite.core.output",
    "ModelRunner": "vibe_sgl_lite.core.runner",
    "Request": "vibe_sgl_lite.scheduler.request",
    "RequestState": "vibe_sgl_lite.scheduler.request",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'vibe_sgl_lite.core' has no attribute {name!r}")
