"""``attention_backend="triton"``: the contract of ``kernels/backend.py`` on Triton kernels.

    store_kv        store.py   one program per (token, kv head): write K/V at its slot
    forward_decode  decode.py  one program per (row, kv head, split), then a reduce over splits
    forward_extend  extend.py  one program per (row, query head, block of new tokens)

Every kernel walks the page table itself, so no row's context is ever copied out of the pool.
On a GPU the kernels compile; on CPU they run under ``TRITON_INTERPRET=1`` (numpy semantics,
slow, exact), which is how the test suite checks them on machines without a GPU.

The host work around the launches happens once per step, not once per layer: ``prepare``
checks the step's index tensors, the first layer checks the layer tensors (every layer has the
same shapes and dtypes) and plans the decode launch, and the split-KV scratch is one buffer
kept on the backend across layers and steps. A layer is then its kernel launches, which is
also what capturing a decode step in a CUDA graph needs.
"""

from __future__ import annotations

import os

import torch

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.backend import KVCache, PagedAttentionBackend
from vibe_sgl_lite.kernels.sparse.method import DecodeView, KVSelection
from vibe_sgl_lite.kernels.triton.args import (
    HeadShape,
    PagedIndex,
    check_index_args,
    check_layer_args,
)
from vibe_sgl_lite.kernels.triton.common import ATTENTION_DTYPES, MAX_HEAD_DIM
from vibe_sgl_lite.kernels.triton.decode import launch_decode, paged_decode_attention
from vibe_sgl_lite.kernels.triton.decode_plan import DecodePlan, SplitScratch, plan_decode
from vibe_sgl_lite.kernels.triton.extend import launch_extend
from vibe_sgl_lite.kernels.triton.store import store_kv
from vibe_sgl_lite.memory.kv_pool import LayerKV


def scales(kv_cache: KVCache) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """An int8 layer's ``(k_scale, v_scale)``, ``[num_slots, Hkv]`` each; ``(None, None)`` else."""
    if isinstance(kv_cache, LayerKV):
        return kv_cache.k_scale, kv_cache.v_scale
    return None, None


class TritonPagedAttention(PagedAttentionBackend):
    name = "triton"
    supports_decode_graphs = True  # the decode plan depends on shapes only (decode_plan.py)

    def __init__(self) -> None:
        super().__init__()
        self.index: PagedIndex | None = None  # this step's checked index tensors
        self.heads: HeadShape | None = None  # checked on this step's first layer
        self.decode_plan: DecodePlan | None = None  # planned on this step's first decode
        self.scratch = SplitScratch()  # split-KV partials, shared by every layer and step

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
        kv_dtypes = (*ATTENTION_DTYPES, torch.int8)
        for option, value, ok in (
            ("dtype", dtype, ATTENTION_DTYPES),
            ("kv_cache_dtype", kv_dtype, kv_dtypes),
        ):
            if value not in ok:
                allowed = ", ".join(str(d).removeprefix("torch.") for d in ok)
                raise ValueError(
                    f"attention_backend='triton' supports {option} in {allowed}; got {value}"
                )

    def prepare(self, batch: ForwardBatch) -> None:
        super().prepare(batch)
        assert self.metadata is not None
        self.index = check_index_args(
            (self.metadata.decode_rows, self.metadata.extend_rows),
            batch.query_start_loc,
            batch.seq_lens,
            batch.page_table,
            batch.page_size,
            batch.input_ids.device,
        )
        self.heads = None
        self.decode_plan = None

    def layer_shape(self, q: torch.Tensor, kv_cache: KVCache, out: torch.Tensor) -> HeadShape:
        """The layer checks, run on the step's first layer; the others share its shapes."""
        if self.heads is None:
            k_cache, v_cache = kv_cache
            self.heads = check_layer_args(q, k_cache, v_cache, out, *scales(kv_cache))
        return self.heads

    def store_kv(
        self, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, batch: ForwardBatch
    ) -> None:
        k_cache, v_cache = kv_cache
        k_scale, v_scale = scales(kv_cache)
        store_kv(k, v, k_cache, v_cache, batch.slot_mapping, k_scale, v_scale)

    def forward_decode(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        plan = self.decode_plan
        if plan is None:
            assert self.metadata is not None and self.index is not None
            heads = self.layer_shape(q, kv_cache, out)
            rows = self.metadata.decode_rows
            plan = plan_decode(heads, self.index, rows, q.device, scratch=self.scratch)
            self.decode_plan = plan
        k_cache, v_cache = kv_cache
        launch_decode(plan, q, k_cache, v_cache, out, scale, *scales(kv_cache))

    def forward_extend(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        assert self.metadata is not None and self.index is not None
        heads = self.layer_shape(q, kv_cache, out)
        k_cache, v_cache = kv_cache
        k_scale, v_scale = scales(kv_cache)
        rows, max_query_len = self.metadata.extend_rows, self.metadata.max_query_len
        launch_extend(
            heads,
            self.index,
            rows,
            max_query_len,
            q,
            k_cache,
            v_cache,
            out,
            scale,
            k_scale,
            v_scale,
        )

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
