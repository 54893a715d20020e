"""Paged KV memory: the page allocator and the per-layer KV pool."""

from vibe_sgl_lite.memory.kv_pool import KVPool, LayerKV, dequantize_int8, quantize_int8
from vibe_sgl_lite.memory.page_allocator import OutOfPagesError, PageAllocator

__all__ = [
    "KVPool",
    "LayerKV",
    "OutOfPagesError",
    "PageAllocator",
    "dequantize_int8",
    "quantize_int8",
]
