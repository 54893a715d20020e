"""Copying Hugging Face checkpoint tensors into our modules.

Our models merge some projections (``q/k/v -> qkv_proj``, ``gate/up -> gate_up_proj``) and drop
the ``model.`` prefix. ``PACKED`` says where each checkpoint tensor lands; everything else maps one
to one, except below a module that stores many checkpoint tensors in one parameter in its own way
(the stacked experts of ``SparseMoeBlock``): such a module implements ``CheckpointViews`` and the
loader asks it where each of its tensors goes. A module cut for tensor parallelism
(``distributed/tensor_parallel.py``) implements ``ShardedModule``: it says which slice of each
checkpoint tensor it holds, and only that slice is read.

Every parameter element must be written exactly once, with exactly the checkpoint tensor's shape:
a missing or mis-shaped tensor is an error that names it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, runtime_checkable

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


Slice = tuple[int, int, int]
"""``(dim, start, length)``: the part of a checkpoint tensor that one rank holds."""


@runtime_checkable
class ShardedModule(Protocol):
    """A module holding only a slice of each checkpoint tensor that fills it.

    ``checkpoint_slices[param]`` lists one ``Slice`` per checkpoint tensor that fills parameter
    ``param`` (one for a plain layer; one per merged projection for a ``MergedLinear``).
    """

    checkpoint_slices: dict[str, list[Slice]]


@runtime_checkable
class CheckpointViews(Protocol):
    """A module that decides itself where the checkpoint tensors below it are stored."""

    def checkpoint_view(
        self, name: str, tensor: torch.Tensor
    ) -> tuple[str, torch.Tensor, torch.Tensor] | None:
        """For checkpoint tensor ``name`` (relative to this module): ``(our parameter name
        relative to this module, the view of its data to copy into, the part of ``tensor`` to
        copy)``, or ``None`` to skip the tensor (another rank holds it). Raises ``KeyError`` for
        a name it does not know."""
        ...


def _strip_prefix(name: str, prefix_map: dict[str, str]) -> str:
    for old, new in prefix_map.items():
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def _target(name: str, prefix_map: dict[str, str]) -> tuple[str, int | None]:
    """Our parameter name for checkpoint ``name``, and its shard index if it was merged."""
    name = _strip_prefix(name, prefix_map)
    parts = name.split(".")
    if len(parts) >= 2 and parts[-2] in PACKED:
        merged, shard = PACKED[parts[-2]]
        return ".".join(parts[:-2] + [merged, parts[-1]]), shard
    return name, None


def _owner(name: str, owners: dict[str, CheckpointViews]) -> tuple[str, CheckpointViews] | None:
    """The ``CheckpointViews`` module above ``name`` (by its module path), if there is one."""
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:i])
        if prefix in owners:
            return prefix, owners[prefix]
    return None


@torch.no_grad()
def load_packed_weights(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    prefix_map: dict[str, str],
) -> None:
    """Copy ``(hf_name, tensor)`` pairs into ``model``; error on unknown, missing or misshaped."""
    params = dict(model.named_parameters(remove_duplicate=False))
    modules = dict(model.named_modules())
    owners = {n: m for n, m in modules.items() if n and isinstance(m, CheckpointViews)}
    tied = getattr(getattr(model, "config", None), "tie_word_embeddings", False)
    # Counted in elements, not tensors: a stacked parameter is filled by one fused checkpoint
    # tensor or by one slice per expert, and both must cover it exactly once.
    expected = {pname: p.numel() for pname, p in params.items()}
    if tied:
        expected.pop("lm_head.weight", None)
    written: dict[str, int] = {}

    for hf_name, tensor in weights:
        if tied and hf_name == "lm_head.weight":
            continue
        local_name = _strip_prefix(hf_name, prefix_map)
        owned = _owner(local_name, owners)
        if owned is not None:
            prefix, owner = owned
            try:
                view = owner.checkpoint_view(local_name[len(prefix) + 1 :], tensor)
            except KeyError:
                raise ValueError(
                    f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}"
                ) from None
            if view is None:
                continue
            name, dest, tensor = f"{prefix}.{view[0]}", view[1], view[2]
        else:
            name, shard = _target(hf_name, prefix_map)
            if name not in params:
                raise ValueError(
                    f"checkpoint tensor {hf_name!r} has no place in {type(model).__name__}"
                )
            dest = params[name].data
            if shard is not None:
                module = modules[name.rsplit(".", 1)[0]]
                assert isinstance(module, MergedLinear)
                dest = dest.narrow(0, module.shard_offset(shard), module.shard_sizes[shard])
        owner_name, _, leaf = name.rpartition(".")
        module = modules[owner_name]
        slices = module.checkpoint_slices.get(leaf) if isinstance(module, ShardedModule) else None
        if slices is not None:  # a tensor-parallel shard: read only this rank's slice
            dim, start, length = slices[shard or 0]
            if tensor.shape[dim] < start + length:
                raise ValueError(
                    f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, too small "
                    f"for the shard {start}:{start + length} of dim {dim}"
                )
            tensor = tensor.narrow(dim, start, length)
        if tuple(dest.shape) != tuple(tensor.shape):
            raise ValueError(
                f"checkpoint tensor {hf_name!r} has shape {tuple(tensor.shape)}, "
                f"expected {tuple(dest.shape)}"
            )
        dest.copy_(tensor.to(dest.dtype))
        written[name] = written.get(name, 0) + dest.numel()
        if written[name] > params[name].numel():
            raise ValueError(f"checkpoint writes {name!r} more than once (last: {hf_name!r})")

    missing = [n for n, count in expected.items() if written.get(n, 0) < count]
    if missing:
        raise ValueError(f"checkpoint is missing tensors for: {', '.join(sorted(missing)[:10])}")
