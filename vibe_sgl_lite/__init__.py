"""vibe-sgl-lite: a small, readable LLM inference engine.

from vibe_sgl_lite import ModelRunner
runner = ModelRunner("path/to/hf-model")
print(runner.generate("Once upon a time", max_tokens=50))

The public names are imported on first use (PEP 562), so ``import vibe_sgl_lite`` and
``vibe-sgl-lite --version`` cost milliseconds: torch and transformers load with the runner.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_PUBLIC = {
    "BatchRequestError": "vibe_sgl_lite.core.runner",
    "GenerationOutput": "vibe_sgl_lite.core.output",
    "ModelRunner": "vibe_sgl_lite.core.runner",
    "SamplingParams": "vibe_sgl_lite.sampling.params",
}
__all__ = sorted(_PUBLIC)

if TYPE_CHECKING:
    from vibe_sgl_lite.core.output import GenerationOutput
    from vibe_sgl_lite.core.runner import BatchRequestError, ModelRunner
    from vibe_sgl_lite.sampling.params import SamplingParams


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'vibe_sgl_lite' has no attribute {name!r}")
