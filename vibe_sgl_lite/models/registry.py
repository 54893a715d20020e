"""Maps the ``architectures`` entry of ``config.json`` to our model class."""

from __future__ import annotations

from torch import nn

from vibe_sgl_lite.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def register_model(architecture: str, cls: type[nn.Module]) -> None:
    """Let user code add an architecture without editing the engine."""
    MODEL_REGISTRY[architecture] = cls


def get_model_class(architecture: str) -> type[nn.Module]:
    try:
        return MODEL_REGISTRY[architecture]
    except KeyError:
        supported = ", ".join(sorted(MODEL_REGISTRY))
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {supported}"
        ) from None
