"""``EagleHead``: the EAGLE-1 draft head, one decoder layer over the target's own features.

EAGLE (Li et al., 2024) drafts at the *feature* level: the target's last hidden state (after its
final RMSNorm, the input of its LM head) is far easier to extrapolate than the next token, and
the token the target actually sampled resolves the uncertainty of that extrapolation. Per token
position ``p`` of a flat batch (the same ``ForwardBatch`` the target uses, no padding)::

    input_ids [T]       token at position p
    features  [T, H]    the target's post-norm hidden state at position p - 1
                        (zeros at position 0, which has no predecessor)
      -> e = embed(input_ids)                       [T, H]   the TARGET's embedding, shared
      -> z = fc(cat([e, features], -1))             [T, H]   Linear(2H, H, bias=True)
      -> z = DecoderLayer(z)                        [T, H]   attention over the head's own pool
      -> out = norm(z)                              [T, H]   ~ the target's feature at position p

``lm_head(out)`` (the TARGET's LM head, shared) then scores the token at position ``p + 1``. A
chain of drafts feeds ``out`` back as the next position's ``features`` together with the token
it predicted.

The layer is this project's ``DecoderLayer`` with the target architecture's flags (Qwen3:
q/k-norm), so it reads and writes a one-layer ``KVPool`` through the same attention backend
object as the target. The pool has the target's ``num_pages`` and ``page_size``: the head's K/V
of position ``p`` sits in the very slot of the target's, so the target's page tables and
``slot_mapping`` serve both, and rolling back a rejected draft frees both at once.

On disk the head is a Hugging Face folder: ``config.json`` (the target's architecture and sizes
with ``num_hidden_layers = 1``) and ``model.safetensors`` with transformers' names (``fc.weight``,
``fc.bias``, ``layers.0.self_attn.q_proj.weight``, ..., ``norm.weight``);
``scripts/train_eagle_head.py`` writes one.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.decoder import DecoderLayer
from vibe_sgl_lite.models.layers import GatedMLP, RMSNorm, RotaryEmbedding
from vibe_sgl_lite.models.loader import iter_safetensors, resolve_dtype
from vibe_sgl_lite.models.registry import get_model_class
from vibe_sgl_lite.models.weight_layout import relayout_linear_weights, resolve_weight_layout
from vibe_sgl_lite.models.weights import load_packed_weights

SETTING = "speculative_draft_model_path"
"""The engine setting that names a head folder: every refusal below names it."""

SHARED_WITH_TARGET = ("embed_tokens.weight", "lm_head.weight")
"""Tensors some EAGLE checkpoints carry although the head uses the target's: skipped."""


class EagleHead(nn.Module):
    """One decoder layer that predicts the target's next feature (see the module docstring).

    ``config``: the head's own config (one layer). ``max_positions``: size of the rotary tables,
    at least the target's context length so any target position can be drafted from.
    """

    def __init__(self, config: ModelConfig, max_positions: int | None = None) -> None:
        super().__init__()
        check_head_config(config)
        self.config = config
        hidden = config.hidden_size
        self.fc = nn.Linear(2 * hidden, hidden, bias=True)
        self.rotary = RotaryEmbedding(
            config.head_dim,
            max(config.max_position_embeddings, max_positions or 0),
            config.rope_theta,
            config.rope_scaling,
        )
        mlp = GatedMLP(hidden, config.intermediate_size, bias=config.mlp_bias)
        arch = get_model_class(config.architecture)
        self.layers = nn.ModuleList([arch.build_layer(config, self.rotary, mlp)])
        self.norm = RMSNorm(hidden, config.rms_norm_eps)

    @property
    def layer(self) -> DecoderLayer:
        layer = self.layers[0]
        assert isinstance(layer, DecoderLayer)
        return layer

    def new_kv_pool(
        self, num_pages: int, page_size: int, dtype: torch.dtype, device: torch.device | str
    ) -> KVPool:
        """The head's one-layer pool; pass the target pool's ``num_pages`` and ``page_size``."""
        cfg = self.config
        return KVPool(1, num_pages, page_size, cfg.num_key_value_heads, cfg.head_dim, dtype, device)

    def forward(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor,
        batch: ForwardBatch,
        kv_pool: KVPool,
        backend: AttentionBackend,
        embed: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """Predicted features ``[T, H]`` for every row of ``batch`` (not only sampled rows).

        ``input_ids [T]``, ``features [T, H]`` (any float dtype: cast to the head's), ``embed``
        the target's token embedding. Writes this step's K/V into ``kv_pool`` at
        ``batch.slot_mapping``; ``backend.prepare(batch)`` must have run for ``batch`` (the
        target's step already did it when the head runs on the target's batch).
        """
        dtype = self.fc.weight.dtype
        z = self.fc(torch.cat([embed(input_ids).to(dtype), features.to(dtype)], dim=-1))
        z = self.layer(z, batch, kv_pool.layers[0], backend)
        out: torch.Tensor = self.norm(z)
        return out

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        target_config: ModelConfig,
        device: torch.device | str = "cpu",
        dtype: str | torch.dtype = "float32",
    ) -> EagleHead:
        """Load a head folder (``config.json`` + ``model.safetensors``) for ``target_config``.

        Refuses, with a ``ValueError`` naming ``speculative_draft_model_path`` and the field, a
        head whose architecture, hidden size or vocabulary differs from the target's.
        """
        folder = Path(path)
        config_file, weights_file = folder / "config.json", folder / "model.safetensors"
        for needed in (config_file, weights_file):
            if not needed.is_file():
                raise ValueError(
                    f"{SETTING}: {folder} is not an EAGLE head folder (no {needed.name}; "
                    "expected config.json + model.safetensors)"
                )
        try:
            config = ModelConfig.from_dict(json.loads(config_file.read_text()))
        except ValueError as error:
            raise ValueError(f"{SETTING}: {config_file}: {error}") from None
        check_matches_target(config, target_config)
        torch_dtype = resolve_dtype(dtype)
        with torch.device("meta"):
            head = cls(config, max_positions=target_config.max_position_embeddings)
        head.to_empty(device=device)
        head.to(dtype=torch_dtype)
        head.rotary.build()
        try:
            load_packed_weights(head, _head_tensors(folder), prefix_map={})
        except ValueError as error:
            raise ValueError(f"{SETTING}: {weights_file}: {error}") from None
        relayout_linear_weights(
            head, resolve_weight_layout("auto", torch.device(device), torch_dtype)
        )
        return head.eval().requires_grad_(False)


def _head_tensors(folder: Path) -> Iterator[tuple[str, Any]]:
    """The checkpoint's tensors, minus those the head shares with the target."""
    for name, tensor in iter_safetensors(folder):
        if name not in SHARED_WITH_TARGET:
            yield name, tensor


def check_head_config(config: ModelConfig) -> None:
    """Refuse what ``EagleHead`` cannot build: more than one layer, or a mixture of experts."""
    if config.num_hidden_layers != 1:
        raise ValueError(
            f"{SETTING}: an EAGLE head has num_hidden_layers = 1, got {config.num_hidden_layers}"
        )
    if config.num_experts:
        raise ValueError(
            f"{SETTING}: an EAGLE head's layer is dense; num_experts = {config.num_experts}"
        )


def check_matches_target(head: ModelConfig, target: ModelConfig) -> None:
    """Refuse a head trained for another model: it would read features it never learned."""
    for field in ("architecture", "hidden_size", "vocab_size"):
        mine, theirs = getattr(head, field), getattr(target, field)
        if mine != theirs:
            name = "architectures" if field == "architecture" else field
            raise ValueError(
                f"{SETTING}: the EAGLE head's {name} is {mine!r}, the target model's is "
                f"{theirs!r}; they must be equal"
            )
    check_head_config(head)
