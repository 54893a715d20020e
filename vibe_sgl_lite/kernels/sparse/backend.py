"""``SparseAttention``: any paged backend wrapped with the research hooks, from outside.

    SparseAttention(inner, methods=[...], pruner=..., capture=...)
      prepare(batch)      inner.prepare(batch)
      forward(q, k, v)    inner.store_kv                  the step's K/V into the pool
                          method.observe_store            per-page summaries (Quest)
                          inner.attend(decode=hooked)     extend rows as the inner backend does;
                                                          decode rows through the hooks below
    hooked decode:  view = the layer's decode rows (q, page tables, lengths, the pool)
                    capture.capture(view)                 raw pre-softmax scores, if recording
                    selection = method.select(view)       which keys each row reads (None: all)
                    pruner.restrict / observe             drop pruned tokens; score the rest
                    inner.forward_decode (all keys) or forward_decode_selected (the selection)

The engine builds one only when a setting asks for it (``research/``): a dense engine's backend
is the plain one and runs none of this. A backend that can read a selection in place (Triton:
a page table of page size 1) provides ``forward_decode_selected``; others get the gather here.
Methods and capture need the pool's ``LayerKV`` (it carries the layer index); with a plain
``(k, v)`` pair a layer reads densely.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.backend import AttentionMetadata, KVCache, PagedAttentionBackend
from vibe_sgl_lite.kernels.sparse.method import (
    AttentionMethod,
    DecodeView,
    KVSelection,
    ScoreCapture,
    attend_selection,
)
from vibe_sgl_lite.kernels.sparse.pruning import TokenPruner
from vibe_sgl_lite.memory.kv_pool import LayerKV


class SparseAttention:
    """``inner`` with per-layer ``methods`` (empty: dense), a ``pruner`` and a ``capture``."""

    def __init__(
        self,
        inner: PagedAttentionBackend,
        methods: Sequence[AttentionMethod] = (),
        pruner: TokenPruner | None = None,
        capture: ScoreCapture | None = None,
    ) -> None:
        self.inner = inner
        self.methods = list(methods)
        self.pruner = pruner
        self.capture = capture

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def metadata(self) -> AttentionMetadata | None:
        return self.inner.metadata

    def set_attention_methods(self, methods: Sequence[AttentionMethod]) -> None:
        self.methods = list(methods)

    def check_supported(
        self, head_dim: int, dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device
    ) -> None:
        self.inner.check_supported(head_dim, dtype, kv_dtype, device)

    def prepare(self, batch: ForwardBatch) -> None:
        self.inner.prepare(batch)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        if self.inner.metadata is None:
            raise RuntimeError(
                f"{type(self.inner).__name__}.prepare(batch) must run before forward"
            )
        self.inner.store_kv(k, v, kv_cache, batch)
        layer = kv_cache if isinstance(kv_cache, LayerKV) else None
        method = self.methods[layer.index] if layer is not None and self.methods else None
        if method is not None:
            assert layer is not None
            method.observe_store(layer, batch.slot_mapping, batch.page_size)
        decode = functools.partial(self.decode_with_hooks, method=method)
        return self.inner.attend(q, kv_cache, batch, scale, decode=decode)

    def decode_with_hooks(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
        method: AttentionMethod | None,
    ) -> None:
        """Decode, letting the layer's method choose the keys and the capture record scores."""
        layer = kv_cache if isinstance(kv_cache, LayerKV) else None
        capture, pruner = self.capture, self.pruner
        if layer is None or (method is None and capture is None and pruner is None):
            self.inner.forward_decode(q, kv_cache, out, batch, scale)
            return
        view = self.decode_view(q, layer, batch, scale)
        if capture is not None and capture.wants(layer.index):
            capture.capture(view)
        selection = method.select(view) if method is not None else None
        if pruner is not None:
            selection = pruner.restrict(view, selection)
            pruner.observe(view, selection)
        if method is not None:
            method.record(view, selection)
        if selection is None:
            self.inner.forward_decode(q, kv_cache, out, batch, scale)
        else:
            self.forward_decode_selected(q, view, selection, out, batch)

    def decode_view(
        self, q: torch.Tensor, kv: LayerKV, batch: ForwardBatch, scale: float
    ) -> DecodeView:
        """What a method sees of this layer's decode rows (see ``kernels/sparse/method.py``)."""
        meta = self.inner.metadata
        assert meta is not None
        rows = meta.decode_rows
        return DecodeView(
            layer=kv.index,
            request_ids=(
                [batch.request_ids[r] for r in meta.decode_rows_cpu]
                if batch.request_ids
                else [-1] * len(meta.decode_rows_cpu)
            ),
            q=q.index_select(0, batch.query_start_loc.index_select(0, rows)),
            kv=kv,
            page_table=batch.page_table.index_select(0, rows),
            seq_lens=batch.seq_lens.index_select(0, rows),
            seq_lens_cpu=[batch.seq_lens_cpu[r] for r in meta.decode_rows_cpu],
            page_size=batch.page_size,
            scale=scale,
        )

    def forward_decode_selected(
        self,
        q: torch.Tensor,
        view: DecodeView,
        selection: KVSelection,
        out: torch.Tensor,
        batch: ForwardBatch,
    ) -> None:
        """Decode rows reading only ``selection``'s keys: the inner backend's own way if it has
        one, else gathered (N is a budget, small)."""
        own = getattr(self.inner, "forward_decode_selected", None)
        if own is not None:
            own(q, view, selection, out, batch)
            return
        meta = self.inner.metadata
        assert meta is not None
        tokens = batch.query_start_loc.index_select(0, meta.decode_rows)
        out.index_copy_(0, tokens, attend_selection(view, selection).to(out.dtype))
