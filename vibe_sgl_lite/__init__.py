"""vibe-sgl-lite: a small, readable LLM inference engine.

from vibe_sgl_lite import ModelRunner
runner = ModelRunner("path/to/hf-model")
print(runner.generate("Once upon a time", max_tokens=50))
"""

from vibe_sgl_lite.core import BatchRequestError, GenerationOutput, ModelRunner
from vibe_sgl_lite.sampling import SamplingParams

__all__ = ["BatchRequestError", "GenerationOutput", "ModelRunner", "SamplingParams"]
__version__ = "0.1.0"
