"""Triton kernels for the paged KV cache: store, decode attention, extend attention.

Pure functions on tensors (no engine types), each writing its output in place:

* ``store_kv``: scatter a step's K/V into the cache slots, optionally quantised to int8;
* ``paged_decode_attention``: one query token per row, GQA-shared K/V loads, split KV;
* ``paged_extend_attention``: several new tokens per row over a cached prefix, causal.

Inside: ``common.py`` holds the device code both attention kernels share (the page-table
walk, the online softmax), ``args.py`` their argument checks, ``decode_plan.py`` what a decode
step decides once on the host (splits, scratch) for every layer to reuse.

On a machine without a GPU they run under Triton's interpreter (``TRITON_INTERPRET=1``, set
before ``triton`` is imported).
"""

from vibe_sgl_lite.kernels.triton.decode import paged_decode_attention
from vibe_sgl_lite.kernels.triton.extend import paged_extend_attention
from vibe_sgl_lite.kernels.triton.store import store_kv

__all__ = ["paged_decode_attention", "paged_extend_attention", "store_kv"]
