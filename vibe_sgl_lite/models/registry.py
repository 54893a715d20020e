"""Maps the ``architectures`` entry of ``config.json`` to our model class."""

from __future__ import annotations

from vibe_sgl_lite.models.decoder import DecoderForCausalLM
from vibe_sgl_lite.models.llama import LlamaForCausalLM
from vibe_sgl_lite.models.qwen2 import Qwen2ForCausalLM
from vibe_sgl_lite.models.qwen3 import Qwen3ForCausalLM
from vibe_sgl_lite.models.qwen3_moe import Qwen3MoeForCausalLM

MODEL_REGISTRY: dict[str, type[DecoderForCausalLM]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
    "Qwen3MoeForCausalLM": Qwen3MoeForCausalLM,
}


def register_model(architecture: str, cls: type[DecoderForCausalLM]) -> None:
    """Let user code add an architecture without editing the engine."""
    MODEL_REGISTRY[architecture] = cls


def get_model_class(architecture: str) -> type[DecoderForCausalLM]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {supported}"
        ) from None
