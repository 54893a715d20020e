"""The preallocated paged KV cache: one K and one V tensor per layer.

Layout per layer: ``[num_pages, page_size, num_kv_heads, head_dim]``. A token's *slot* is
``page * page_size + offset``; viewing a layer's cache as ``[num_slots, num_kv_heads, head_dim]``
lets attention write a whole batch of new tokens with one indexed store (``slot_mapping``).
Nothing is ever concatenated or reallocated while the engine runs.
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(
        self,
        num_layers: int,
        num_pages: int,
        page_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        self.num_layers = num_layers
        self.num_pages = num_pages
        self.page_size = page_size
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.dtype = dtype
        shape = (num_pages, page_size, num_kv_heads, head_dim)
        # Zeros, not empty: attention multiplies masked-out padding slots by a zero weight, and
        # 0 * NaN from uninitialised memory would poison the row. (Large zeroed allocations are
        # mapped lazily by the OS, so untouched pages still cost no physical memory on CPU.)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    def layer(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of layer ``i`` viewed as ``[num_slots, num_kv_heads, head_dim]``."""
        flat = (self.num_slots, self.num_kv_heads, self.head_dim)
        return self.k[i].view(flat), self.v[i].view(flat)

    @staticmethod
    def bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize
