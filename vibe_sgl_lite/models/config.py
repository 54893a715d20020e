"""``ModelConfig``: the fields of a Hugging Face ``config.json`` that the engine needs, typed.

Both spellings of rotary settings are accepted: ``rope_theta`` + ``rope_scaling`` (checkpoints on
the Hub) and ``rope_parameters`` (written by transformers >= 5).

Mixture-of-experts fields default to "no experts", so a dense config leaves them untouched. The
expert count has two spellings too: ``num_experts`` (Qwen3-MoE on the Hub) and
``num_local_experts`` (what transformers >= 5 writes, through its attribute map).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# Fields without a sensible default: every other field falls back to the usual value.
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads")


@dataclass
class ModelConfig:
    """What the model classes, the KV pool and the engine read from ``config.json``.

    ``raw`` keeps the whole dict, for the rare field that only one architecture cares about
    (for example the sliding-window flags that the decoder base refuses).
    """

    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    eos_token_ids: list[int]
    torch_dtype: str | None
    # Dense MLP details (Llama spells these out; Qwen models use the defaults).
    hidden_act: str = "silu"
    mlp_bias: bool = False
    # Mixture of experts (Qwen3-MoE). ``num_experts == 0`` means a dense model.
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    raw: dict[str, Any] = field(repr=False, default_factory=dict)

    def is_sparse_layer(self, layer_idx: int) -> bool:
        """Whether decoder layer ``layer_idx`` uses experts, by transformers' Qwen3-MoE rule."""
        return (
            layer_idx not in self.mlp_only_layers
            and self.num_experts > 0
            and (layer_idx + 1) % self.decoder_sparse_step == 0
        )

    @classmethod
    def from_dict(cls, cfg: dict[str, Any]) -> ModelConfig:
        """Parse a ``config.json``-shaped dict; refuses what no registered model class can run.

        The architecture is checked first, so an unsupported model (GPT-2 spells its fields
        ``n_head``/``n_embd``) is reported as unsupported, with the list of supported ones,
        instead of as a ``KeyError`` on the first field it spells differently."""
        archs = cfg.get("architectures") or []
        if not archs:
            raise ValueError("config.json has no 'architectures' entry")
        # Imported here: the registry imports the model classes, which import this module.
        from vibe_sgl_lite.models.registry import get_model_class

        get_model_class(archs[0])
        missing = [name for name in REQUIRED_FIELDS if cfg.get(name) is None]
        if missing:
            raise ValueError(
                f"model config ({archs[0]}) lacks the required field(s) "
                f"{', '.join(repr(m) for m in missing)}"
            )
        heads = int(cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or int(cfg["hidden_size"]) // heads
        rope_params = dict(cfg.get("rope_parameters") or {})
        rope_theta = float(rope_params.get("rope_theta", cfg.get("rope_theta", 10000.0)))
        scaling = cfg.get("rope_scaling") or rope_params or None
        if scaling is not None:
            scaling = {k: v for k, v in scaling.items() if k != "rope_theta"}
            rope_type = scaling.get("rope_type", scaling.get("type", "default"))
            if rope_type not in SUPPORTED_ROPE_TYPES:
                raise ValueError(
                    f"rope_scaling type {rope_type!r} is not supported; "
                    f"supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
                )
            scaling["rope_type"] = rope_type
            if rope_type == "default":
                scaling = None
        eos = cfg.get("eos_token_id")
        eos_ids = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        return cls(
            architecture=archs[0],
            model_type=cfg.get("model_type", ""),
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg.get("intermediate_size", 0)),
            num_hidden_layers=int(cfg["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(head_dim),
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            rope_theta=rope_theta,
            rope_scaling=scaling,
            eos_token_ids=eos_ids,
            torch_dtype=cfg.get("torch_dtype") or cfg.get("dtype"),
            hidden_act=str(cfg.get("hidden_act", "silu")),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            num_experts=int(cfg.get("num_experts", cfg.get("num_local_experts")) or 0),
            num_experts_per_tok=int(cfg.get("num_experts_per_tok") or 0),
            moe_intermediate_size=int(cfg.get("moe_intermediate_size") or 0),
            norm_topk_prob=bool(cfg.get("norm_topk_prob", False)),
            decoder_sparse_step=int(cfg.get("decoder_sparse_step") or 1),
            mlp_only_layers=[int(i) for i in cfg.get("mlp_only_layers") or []],
            raw=cfg,
        )

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> ModelConfig:
        """The config of whatever ``path`` names: a Hugging Face folder or a llama.cpp ``.gguf``.

        The one entry point the engine and the loader use, so both accept the same paths and a
        wrong path fails with the same message."""
        from vibe_sgl_lite.models.gguf import gguf_config, is_gguf_file

        p = Path(path)
        if p.is_dir():
            return cls.from_model_dir(p)
        if is_gguf_file(p):
            return cls.from_dict(gguf_config(p))
        if not p.exists():
            raise FileNotFoundError(f"model path {p} does not exist")
        raise ValueError(
            f"model path {p} is neither a model folder (config.json + *.safetensors) nor a "
            "GGUF file (.gguf, starting with the GGUF magic bytes)"
        )

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(f"no config.json in model folder {model_dir}")
        return cls.from_dict(json.loads(path.read_text()))
