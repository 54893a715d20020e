"""Copying Hugging Face checkpoint tensors into our modules.

Our models merge some projections (``q/k/v -> qkv_proj``, ``gate/up -> gate_up_proj``) and drop
the ``model.`` prefix. ``PACKED`` says where each checkpoint tensor lands; everything else maps one
to one. Every parameter must be written exactly once, with exactly its shape: a missing or
mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from vibe_sgl_lite.models.layers import MergedLinear

# checkpoint module name -> (our merged module name, shard index)
PACKED: dict[str, tuple[str, int]] = {
    "q_proj": ("qkv_proj", 0),
    "k_proj": ("qkv_proj", 1),
    "v_proj": ("qkv_proj", 2),
    "gate_proj": ("gate_up_proj", 0),
    "up_proj": ("gate_up_proj", 1),
}


def _target(name: str, prefix_map: dict[str, str]) -> tuple[str, int | None]:
    for old, new in prefix_map.items():
        if name.startswith(old):
            name = new + name[len(old) :]
            break
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in PACKED:
        merged, shard = PACKED[parts[-2]]
        return ".".join(parts[:-2] + [merged, parts[-1]]), shard
    return name, None


@torch.no_grad()
def load_packed_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    prefix_map: dict[str, str],
) -> None:
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    expected: dict[str, int] = {}
    for pname, p in params.items():
        module = modules[pname.rsplit(".", 1)[0]] if "." in pname else model
        expected[pname] = len(module.shard_sizes) if isinstance(module, MergedLinear) else 1
    if tied:
        expected.pop("lm_head.weight", None)
    written: dict[str, int] = {}

    for hf_name, tensor in weights:
        if tied and hf_name == "lm_head.weight":
            continue
        name, shard = _target(hf_name, prefix_map)
        if name not in params:
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}"
            )
        param = params[name]
        if shard is None:
            dest = param.data
        else:
            module = modules[name.rsplit(".", 1)[0]]
            assert isinstance(module, MergedLinear)
            start = module.shard_offset(shard)
            dest = param.data.narrow(0, start, module.shard_sizes[shard])
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor.to(dest.dtype))
        written[name] = written.get(name, 0) + 1

    missing = [n for n, count in expected.items() if written.get(n, 0) < count]
    if missing:
        raise ValueError(f"checkpoint is missing tensors for: {', '.join(sorted(missing)[:10])}")
