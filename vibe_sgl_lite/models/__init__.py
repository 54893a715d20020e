"""Model definitions (from scratch), the architecture registry and the checkpoint loader."""

from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.loader import load_model
from vibe_sgl_lite.models.registry import MODEL_REGISTRY, get_model_class, register_model

__all__ = ["MODEL_REGISTRY", "ModelConfig", "get_model_class", "load_model", "register_model"]
