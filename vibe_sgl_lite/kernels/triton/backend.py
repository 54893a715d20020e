"""``attention_backend="triton"``: the contract of ``kernels/backend.py`` on Triton kernels.

    store_kv        store.py   one program per (token, kv head): write K/V at its slot
    forward_decode  decode.py  one program per (row, kv head, split), then a reduce over splits
    forward_extend  extend.py  one program per (row, query head, block of new tokens)

Every kernel walks the page table itself, so no row's context is ever copied out of the pool.
On a GPU the kernels compile; on CPU they run under ``TRITON_INTERPRET=1`` (numpy semantics,
slow, exact), which is how the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import os

import torch

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.backend import KVCache, PagedKernelBackend
from vibe_sgl_lite.kernels.sparse.method import DecodeView, KVSelection
from vibe_sgl_lite.kernels.triton.decode import paged_decode_attention
from vibe_sgl_lite.kernels.triton.extend import paged_extend_attention
from vibe_sgl_lite.kernels.triton.store import store_kv
from vibe_sgl_lite.memory.kv_pool import LayerKV


def scales(kv_cache: KVCache) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """An int8 layer's ``(k_scale, v_scale)``, ``[num_slots, Hkv]`` each; ``(None, None)`` else."""
    if isinstance(kv_cache, LayerKV):
        return kv_cache.k_scale, kv_cache.v_scale
    return None, None


MAX_HEAD_DIM = 256
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


class TritonPagedAttention(PagedKernelBackend):
    name = "triton"
    decode_kernel = staticmethod(paged_decode_attention)
    extend_kernel = staticmethod(paged_extend_attention)

    def check_supported(
        self, head_dim: int, dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device
    ) -> None:
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise ValueError(
                "attention_backend='triton' needs device='cuda' (or TRITON_INTERPRET=1 to run "
                f"the kernels in triton's interpreter); got device={str(device)!r}"
            )
        if not 1 <= head_dim <= MAX_HEAD_DIM:
            raise ValueError(
                f"attention_backend='triton' supports head_dim 1..{MAX_HEAD_DIM}; "
                f"this model has head_dim={head_dim}"
            )
        kv_dtypes = (*DTYPES, torch.int8)
        for option, value, ok in (
            ("dtype", dtype, DTYPES),
            ("kv_cache_dtype", kv_dtype, kv_dtypes),
        ):
            if value not in ok:
                allowed = ", ".join(str(d).removeprefix("torch.") for d in ok)
                raise ValueError(
                    f"attention_backend='triton' supports {option} in {allowed}; got {value}"
                )

    def store_kv(
        self, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, batch: ForwardBatch
    ) -> None:
        k_cache, v_cache = kv_cache
        k_scale, v_scale = scales(kv_cache)
        store_kv(k, v, k_cache, v_cache, batch.slot_mapping, k_scale, v_scale)

    def forward_decode_selected(
        self,
        q: torch.Tensor,
        view: DecodeView,
        selection: KVSelection,
        out: torch.Tensor,
        batch: ForwardBatch,
    ) -> None:
        """The decode kernel with one slot list per (row, KV head): a page table of page size 1."""
        assert self.metadata is not None
        rows = self.metadata.decode_rows
        table = selection.slots.new_zeros((batch.num_seqs, *selection.slots.shape[1:]))
        lengths = selection.lengths.new_zeros((batch.num_seqs, selection.lengths.shape[1]))
        table.index_copy_(0, rows, selection.slots)
        lengths.index_copy_(0, rows, selection.lengths)
        paged_decode_attention(
            q,
            view.kv.k,
            view.kv.v,
            out,
            rows,
            batch.query_start_loc,
            lengths,
            table,
            1,
            view.scale,
            k_scale=view.kv.k_scale,
            v_scale=view.kv.v_scale,
        )
