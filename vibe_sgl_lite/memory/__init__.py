"""Paged KV memory: the page allocator and the per-layer KV pool."""

from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.memory.page_allocator import OutOfPagesError, PageAllocator

__all__ = ["KVPool", "OutOfPagesError", "PageAllocator"]
