"""The attention-backend contract: what every implementation of paged attention must do.

A model layer hands its backend this step's ``q, k, v`` and its slice of the KV pool; the
backend answers ``[T, num_heads, head_dim]``. Per step and per layer, in this order:

1. **prepare** (once per step, before the model runs): derive whatever the step needs from the
   ``ForwardBatch`` (which rows decode, which extend, index tensors, kernel launch parameters)
   and keep it on the backend; every layer of the step reuses it.
2. **store**: write the step's new K/V into the pool at ``batch.slot_mapping``, for *all* rows.
3. **decode** the rows with one new token and **extend** the rows with several (a prompt, a
   prompt chunk, or a prompt whose prefix came from the prefix cache), each query attending
   causally to its own row's keys read through the page table.

Store comes before any read, for the whole batch. Two rows of one batch may share prefix pages
(the prefix cache hands a prompt's pages to a second request in the same step), and the second
row then *reads* keys the first row *writes* in this very forward: any backend that reads before
it stores, or stores per row while attending, gives that row garbage.

Layouts::

    q                 [T, Hq, D]        T = tokens of the step, rows one after another
    k, v              [T, Hkv, D]       Hq = group * Hkv (GQA): query head h reads kv head h // group
    k_cache, v_cache  [num_slots, Hkv, D]   slot = page * page_size + offset
    out               [T, Hq, D]        row r's tokens: out[query_start_loc[r] : query_start_loc[r+1]]

    row r, q_len Q, kv_len L: its query i sits at position L - Q + i and sees keys 0 .. L - Q + i

``tests/kernels/test_backend_contract.py`` checks every registered backend against these rules.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.sparse.method import (
    AttentionMethod,
    DecodeView,
    KVSelection,
    ScoreCapture,
    attend_selection,
)
from vibe_sgl_lite.kernels.sparse.pruning import TokenPruner
from vibe_sgl_lite.memory.kv_pool import LayerKV, quantize_int8

KVCache = LayerKV | tuple[torch.Tensor, torch.Tensor]
"""One layer's cache: the pool's ``LayerKV`` (which unpacks as ``k_cache, v_cache``, each
``[num_slots, Hkv, D]``, and may carry int8 scales), or a plain pair of tensors."""


class AttentionBackend(Protocol):
    """What a model layer needs from an attention implementation (see the module docstring).

    ``ModelWorker.forward`` calls ``prepare(batch)`` once per step, before the model runs; every
    layer's ``forward`` of that step reuses what it derived.
    """

    def prepare(self, batch: ForwardBatch) -> None:
        """Build this step's metadata once, for every layer's ``forward`` to reuse."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        """Store ``k, v`` into ``kv_cache``, then attend: ``q [T, Hq, D]`` -> ``[T, Hq, D]``."""
        ...


@dataclass
class AttentionMetadata:
    """The step's rows split by kind, built once by ``prepare`` for every layer.

    ``decode_rows [Bd]``: rows with one query token; ``extend_rows [Be]``: rows with more.
    The ``*_cpu`` lists mirror them on the host, so no layer has to synchronise to ask.
    """

    decode_rows: torch.Tensor
    extend_rows: torch.Tensor
    decode_rows_cpu: list[int]
    extend_rows_cpu: list[int]
    max_query_len: int
    max_seq_len: int

    @classmethod
    def from_batch(cls, batch: ForwardBatch) -> AttentionMetadata:
        decode = [i for i, n in enumerate(batch.query_lens_cpu) if n == 1]
        extend = [i for i, n in enumerate(batch.query_lens_cpu) if n > 1]
        device = batch.input_ids.device
        return cls(
            decode_rows=torch.tensor(decode, dtype=torch.int64, device=device),
            extend_rows=torch.tensor(extend, dtype=torch.int64, device=device),
            decode_rows_cpu=decode,
            extend_rows_cpu=extend,
            max_query_len=max(batch.query_lens_cpu),
            max_seq_len=max(batch.seq_lens_cpu),
        )


class PagedAttentionBackend:
    """A backend written as its three parts; ``forward`` runs them in the contract's order.

    Subclasses implement ``forward_decode`` and ``forward_extend`` (each fills its rows of
    ``out``) and may override ``store_kv``, ``prepare`` and ``forward_decode_selected``;
    ``check_supported`` refuses, at engine construction, a model shape or dtype the
    implementation cannot run.

    Research hooks live here too, so every subclass gets them: ``methods`` (one
    ``AttentionMethod`` per layer, ``kernels/sparse/``) choose which keys decode rows read, and
    ``capture`` records raw pre-softmax decode scores. Both need the pool's ``LayerKV`` (it
    carries the layer index); with a plain ``(k, v)`` pair the layer reads densely.
    """

    name = "paged"

    def __init__(self) -> None:
        self.metadata: AttentionMetadata | None = None
        self.methods: list[AttentionMethod] = []  # per layer; empty: dense everywhere
        self.capture: ScoreCapture | None = None
        self.pruner: TokenPruner | None = None

    def set_attention_methods(self, methods: Sequence[AttentionMethod]) -> None:
        self.methods = list(methods)

    def check_supported(
        self, head_dim: int, dtype: torch.dtype, kv_dtype: torch.dtype, device: torch.device
    ) -> None:
        """Raise ``ValueError`` naming the option if this backend cannot run the model."""

    def prepare(self, batch: ForwardBatch) -> None:
        self.metadata = AttentionMetadata.from_batch(batch)

    def store_kv(
        self, k: torch.Tensor, v: torch.Tensor, kv_cache: KVCache, batch: ForwardBatch
    ) -> None:
        """Write ``k, v [T, Hkv, D]`` at ``batch.slot_mapping``: one indexed copy each.

        An int8 cache gets the values quantised per token and head, and their scales.
        """
        k_cache, v_cache = kv_cache
        slots = batch.slot_mapping
        # index_copy_: the plain-index kernel, much cheaper on CPU than advanced-index assignment.
        if isinstance(kv_cache, LayerKV) and kv_cache.k_scale is not None:
            assert kv_cache.v_scale is not None
            for x, cache, scales in (
                (k, k_cache, kv_cache.k_scale),
                (v, v_cache, kv_cache.v_scale),
            ):
                codes, scale = quantize_int8(x)
                cache.index_copy_(0, slots, codes)
                scales.index_copy_(0, slots, scale)
            return
        k_cache.index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.index_copy_(0, slots, v.to(v_cache.dtype))

    def forward_decode(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        """Fill ``out`` at the token of every row in ``metadata.decode_rows``."""
        raise NotImplementedError

    def forward_extend(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        """Fill ``out`` at the tokens of every row in ``metadata.extend_rows``."""
        raise NotImplementedError

    def forward_decode_selected(
        self,
        q: torch.Tensor,
        view: DecodeView,
        selection: KVSelection,
        out: torch.Tensor,
        batch: ForwardBatch,
    ) -> None:
        """Decode rows reading only ``selection``'s keys (gathered: N is a budget, small)."""
        assert self.metadata is not None
        tokens = batch.query_start_loc.index_select(0, self.metadata.decode_rows)
        out.index_copy_(0, tokens, attend_selection(view, selection).to(out.dtype))

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
        assert self.metadata is not None
        layer = kv_cache if isinstance(kv_cache, LayerKV) else None
        capture, pruner = self.capture, self.pruner
        if layer is None or (method is None and capture is None and pruner is None):
            self.forward_decode(q, kv_cache, out, batch, scale)
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
            self.forward_decode(q, kv_cache, out, batch, scale)
        else:
            self.forward_decode_selected(q, view, selection, out, batch)

    def decode_view(
        self, q: torch.Tensor, kv: LayerKV, batch: ForwardBatch, scale: float
    ) -> DecodeView:
        """What a method sees of this layer's decode rows (see ``kernels/sparse/method.py``)."""
        assert self.metadata is not None
        rows = self.metadata.decode_rows
        return DecodeView(
            layer=kv.index,
            request_ids=(
                [batch.request_ids[r] for r in self.metadata.decode_rows_cpu]
                if batch.request_ids
                else [-1] * len(self.metadata.decode_rows_cpu)
            ),
            q=q.index_select(0, batch.query_start_loc.index_select(0, rows)),
            kv=kv,
            page_table=batch.page_table.index_select(0, rows),
            seq_lens=batch.seq_lens.index_select(0, rows),
            seq_lens_cpu=[batch.seq_lens_cpu[r] for r in self.metadata.decode_rows_cpu],
            page_size=batch.page_size,
            scale=scale,
        )

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        meta = self.metadata
        if meta is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(batch) must run before forward")
        self.store_kv(k, v, kv_cache, batch)
        layer = kv_cache if isinstance(kv_cache, LayerKV) else None
        method = self.methods[layer.index] if layer is not None and self.methods else None
        if method is not None:
            assert layer is not None
            method.observe_store(layer, batch.slot_mapping, batch.page_size)
        out = torch.empty_like(q)
        if meta.decode_rows_cpu:
            self.decode_with_hooks(q, kv_cache, out, batch, scale, method)
        if meta.extend_rows_cpu:
            self.forward_extend(q, kv_cache, out, batch, scale)
        return out


def int8_scales(kv_cache: KVCache) -> dict[str, torch.Tensor]:
    """``{"k_scale": ..., "v_scale": ...}`` for an int8 layer, ``{}`` for a float one."""
    if isinstance(kv_cache, LayerKV) and kv_cache.k_scale is not None:
        assert kv_cache.v_scale is not None
        return {"k_scale": kv_cache.k_scale, "v_scale": kv_cache.v_scale}
    return {}


class PagedKernelBackend(PagedAttentionBackend):
    """A backend made of two kernels with the shared signature of ``cpu_paged`` and ``triton``:

        kernel(q, k_cache, v_cache, out, rows, query_start_loc, seq_lens, page_table,
               page_size, scale, [max_query_len=], [k_scale=, v_scale=])   -> fills out[rows]

    Subclasses set ``decode_kernel`` and ``extend_kernel``; int8 scales are passed only for an
    int8 layer, so a kernel without them must refuse int8 in ``check_supported``.
    """

    decode_kernel: Callable[..., None]
    extend_kernel: Callable[..., None]

    def forward_decode(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        assert self.metadata is not None
        k_cache, v_cache = kv_cache
        rows = self.metadata.decode_rows
        self.decode_kernel(
            *(q, k_cache, v_cache, out, rows, batch.query_start_loc, batch.seq_lens),
            *(batch.page_table, batch.page_size, scale),
            **int8_scales(kv_cache),
        )

    def forward_extend(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        assert self.metadata is not None
        k_cache, v_cache = kv_cache
        rows = self.metadata.extend_rows
        self.extend_kernel(
            *(q, k_cache, v_cache, out, rows, batch.query_start_loc, batch.seq_lens),
            *(batch.page_table, batch.page_size, scale),
            max_query_len=self.metadata.max_query_len,
            **int8_scales(kv_cache),
        )
