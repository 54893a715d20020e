"""``LoRAManager``: adapters in batch slots, on one worker (one rank under tensor parallelism).

    host memory    LRU of up to max_loaded_loras adapters, read from their PEFT folders
        │  swap in: copied into a free slot, or the least recently used slot the step
        ▼  does not need (its adapter stays in host memory)
    batch slots    max_loras_per_batch per LoRALinear: A [S, R, in], B [S, out, R]
        │  prepare(batch): each row's adapter -> its slot -> a slot per token, grouped
        ▼
    LoRALinear.forward: base product once, then the segmented shrink/expand per slot

Rows name their adapter by ``AdapterRef`` (uid and folder), so a worker process needs no other
message to load one: it reads the folder the first time it meets the uid. The scheduler never
puts more distinct adapters in one step than there are slots (``scheduler.py``); a step that
did would be a bug, and ``prepare`` says so.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from vibe_sgl_lite.batch.forward_batch import AdapterRef, ForwardBatch
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels.lora import LoRASegments
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.layers import Attention, GatedMLP
from vibe_sgl_lite.models.lora.adapter import LoRAAdapter, read_adapter
from vibe_sgl_lite.models.lora.linear import LoRALinear, LoRAStep


def resolve_lora_backend(name: str, device: torch.device) -> str:
    """``lora_backend`` resolved: ``auto`` is ``triton`` on CUDA, ``torch`` elsewhere."""
    if name == "auto":
        return "triton" if device.type == "cuda" else "torch"
    return name


class LoRAManager:
    """Installs ``LoRALinear`` on ``model``'s projections and fills their slots per step."""

    def __init__(
        self,
        model: nn.Module,
        config: EngineConfig,
        model_config: ModelConfig,
        device: torch.device,
    ) -> None:
        self.model_config, self.device = model_config, device
        self.max_rank, self.num_slots = config.max_lora_rank, config.max_loras_per_batch
        self.host_capacity = config.max_loaded_loras
        self.backend = resolve_lora_backend(config.lora_backend, device)
        self.step = LoRAStep()
        self.linears = self._install(model, config.torch_dtype)
        self.slot_uid: list[int | None] = [None] * self.num_slots
        self.slot_rank = [0] * self.num_slots
        self.slot_used = [0] * self.num_slots  # the step that last used each slot (LRU)
        self.host: OrderedDict[int, LoRAAdapter] = OrderedDict()
        self.num_steps = self.num_swaps = 0

    def _install(self, model: nn.Module, dtype: torch.dtype) -> dict[str, LoRALinear]:
        """Wrap every attention and dense MLP projection; ``{module path: wrapper}``."""
        hidden = self.model_config.hidden_size
        linears: dict[str, LoRALinear] = {}
        for path, module in list(model.named_modules()):
            shapes: dict[str, tuple[int, list[int]]]
            if isinstance(module, Attention):
                q, kv = module.q_size, module.kv_size
                shapes = {"qkv_proj": (hidden, [q, kv, kv]), "o_proj": (q, [hidden])}
            elif isinstance(module, GatedMLP):
                n = module.intermediate_size
                shapes = {"gate_up_proj": (hidden, [n, n]), "down_proj": (n, [hidden])}
            else:
                continue
            for name, (in_features, out_sizes) in shapes.items():
                wrapper = LoRALinear(
                    getattr(module, name),
                    in_features,
                    out_sizes,
                    self.step,
                    self.num_slots,
                    self.max_rank,
                    self.backend,
                    dtype,
                    self.device,
                )
                setattr(module, name, wrapper)
                linears[f"{path}.{name}"] = wrapper
        return linears

    def _adapter(self, ref: AdapterRef) -> LoRAAdapter:
        """``ref``'s weights from the host LRU, read from its folder on a miss."""
        adapter = self.host.get(ref.uid)
        if adapter is None:
            adapter = read_adapter(ref.path, self.model_config, self.max_rank)
            self.host[ref.uid] = adapter
            while len(self.host) > self.host_capacity:
                self.host.popitem(last=False)
        self.host.move_to_end(ref.uid)
        return adapter

    def _swap_in(self, ref: AdapterRef, needed: set[int]) -> int:
        """A slot holding ``ref``: its own, else a free one, else the least recently used slot
        whose adapter this step does not need."""
        if ref.uid in self.slot_uid:
            return self.slot_uid.index(ref.uid)
        free = [s for s, uid in enumerate(self.slot_uid) if uid is None or uid not in needed]
        slot = min(free, key=lambda s: (self.slot_uid[s] is not None, self.slot_used[s]))
        adapter = self._adapter(ref)
        per_module: dict[str, dict[int, tuple[torch.Tensor, torch.Tensor]]] = {}
        for (module, index), ab in adapter.weights.items():
            per_module.setdefault(module, {})[index] = ab
        for path, linear in self.linears.items():
            linear.load_slot(slot, per_module.get(path, {}))
        self.slot_uid[slot], self.slot_rank[slot] = ref.uid, adapter.rank
        self.num_swaps += 1
        return slot

    def prepare(self, batch: ForwardBatch) -> None:
        """Bring the step's adapters into slots and group its tokens by slot (once per step)."""
        self.num_steps += 1
        refs = {ref.uid: ref for ref in batch.adapters if ref is not None}
        if not refs:
            self.step.segments = None
            return
        if len(refs) > self.num_slots:
            raise RuntimeError(
                f"a step with {len(refs)} distinct adapters, above max_loras_per_batch="
                f"{self.num_slots} (the scheduler must not admit it)"
            )
        slot_of_uid = {uid: self._swap_in(ref, set(refs)) for uid, ref in refs.items()}
        for slot in slot_of_uid.values():
            self.slot_used[slot] = self.num_steps
        slot_of_token: list[int] = []
        for ref, n in zip(batch.adapters, batch.query_lens_cpu):
            slot_of_token.extend([slot_of_uid[ref.uid] if ref is not None else -1] * n)
        self.step.segments = LoRASegments.build(
            slot_of_token, self.slot_rank, self.device, self.backend
        )
