"""The preallocated paged KV cache: one K and one V tensor per layer.

Layout per layer: ``[num_pages, page_size, num_kv_heads, head_dim]``. A token's *slot* is
``page * page_size + offset``; viewing a layer's cache as ``[num_slots, num_kv_heads, head_dim]``
lets attention write a whole batch of new tokens with one indexed store (``slot_mapping``).
Nothing is ever concatenated or reallocated while the engine runs.

With ``dtype=torch.int8`` the pool stores K/V quantised per token and head (symmetric,
``x ~= int8 * scale``) and keeps the float32 scales beside it, ``[num_slots, num_kv_heads]``
per layer: one byte per element plus 4 bytes per token and head, about half of bf16's bytes.
"""

from __future__ import annotations

import torch

INT8_MIN_SCALE = 1e-8
"""Floor of a quantisation scale, so an all-zero row does not divide by zero."""


def quantize_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x [T, H, D]`` -> (``int8 [T, H, D]``, ``scale [T, H]`` float32), ``x ~= q * scale``.

    Symmetric per token and head: ``scale = max|x| / 127``, values rounded to nearest.
    """
    scale = (x.float().abs().amax(dim=-1) / 127.0).clamp_min(INT8_MIN_SCALE)
    q = torch.round(x.float() / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Inverse of ``quantize_int8``: ``q [..., H, D]`` times ``scale [..., H]``, in ``dtype``."""
    return (q.float() * scale.unsqueeze(-1)).to(dtype)


class LayerKV(tuple[torch.Tensor, torch.Tensor]):
    """One layer's slice of the pool, as attention reads and writes it.

    ``k, v``: ``[num_slots, num_kv_heads, head_dim]``; ``k_scale, v_scale``:
    ``[num_slots, num_kv_heads]`` float32 for an int8 pool, else ``None``; ``index``: the
    layer's number. It *is* the pair ``(k, v)`` (a tuple), so a backend that needs only the two
    tensors unpacks it as ``k_cache, v_cache = layer_kv``.
    """

    index: int  # type: ignore[assignment]  # the layer number shadows tuple.index, unused here
    k: torch.Tensor
    v: torch.Tensor
    k_scale: torch.Tensor | None
    v_scale: torch.Tensor | None

    def __new__(
        cls,
        index: int,
        k: torch.Tensor,
        v: torch.Tensor,
        k_scale: torch.Tensor | None = None,
        v_scale: torch.Tensor | None = None,
    ) -> LayerKV:
        self = super().__new__(cls, (k, v))
        self.index, self.k, self.v, self.k_scale, self.v_scale = index, k, v, k_scale, v_scale
        return self

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None


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
        *,
        first_layer: int = 0,
    ) -> None:
        """``num_layers`` layers, the model's ``first_layer`` onwards: a pipeline stage's pool
        holds only its own layers (``layers[0]`` is then the model's layer ``first_layer``)."""
        self.num_layers = num_layers
        self.first_layer = first_layer
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
        scales = (num_pages * page_size, num_kv_heads)
        quantized = dtype == torch.int8
        self.k_scale = [
            torch.zeros(scales, device=device) for _ in range(num_layers if quantized else 0)
        ]
        self.v_scale = [
            torch.zeros(scales, device=device) for _ in range(num_layers if quantized else 0)
        ]
        self.layers = [self._view(i) for i in range(num_layers)]
        """Layer ``i``'s ``LayerKV``, built once: the model indexes this list every step."""

    @property
    def num_slots(self) -> int:
        return self.num_pages * self.page_size

    def layer(self, i: int) -> LayerKV:
        """Layer ``i``: K and V viewed as ``[num_slots, num_kv_heads, head_dim]`` (+ scales)."""
        return self.layers[i]

    def _view(self, i: int) -> LayerKV:
        flat = (self.num_slots, self.num_kv_heads, self.head_dim)
        index = self.first_layer + i
        if self.k_scale:
            return LayerKV(
                index, self.k[i].view(flat), self.v[i].view(flat), self.k_scale[i], self.v_scale[i]
            )
        return LayerKV(index, self.k[i].view(flat), self.v[i].view(flat))

    @staticmethod
    def bytes_per_token(
        num_layers: int, num_kv_heads: int, head_dim: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        scale_bytes = 4 if dtype == torch.int8 else 0  # one float32 scale per token and head
        return 2 * num_layers * num_kv_heads * (head_dim * itemsize + scale_bytes)
