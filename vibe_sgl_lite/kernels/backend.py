"""The attention-backend contract, and ``PagedAttentionBackend``, the one base class to know.

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

Research hooks (sparse attention methods, token pruning, score capture) are not here: they wrap
a backend from outside (``kernels/sparse/backend.py``), so a dense engine runs none of their
code. ``tests/kernels/test_backend_contract.py`` checks every registered backend against these
rules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Protocol

import torch

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.memory.kv_pool import LayerKV, quantize_int8

KVCache = LayerKV | tuple[torch.Tensor, torch.Tensor]
"""One layer's cache: the pool's ``LayerKV`` (which unpacks as ``k_cache, v_cache``, each
``[num_slots, Hkv, D]``, and may carry int8 scales), or a plain pair of tensors."""

DecodeFn = Callable[[torch.Tensor, KVCache, torch.Tensor, ForwardBatch, float], None]
"""``forward_decode``'s signature: ``(q, kv_cache, out, batch, scale)``, fills ``out`` in place."""


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
        )


def int8_scales(kv_cache: KVCache) -> dict[str, torch.Tensor]:
    """``{"k_scale": ..., "v_scale": ...}`` for an int8 layer, ``{}`` for a float one."""
    if isinstance(kv_cache, LayerKV) and kv_cache.k_scale is not None:
        assert kv_cache.v_scale is not None
        return {"k_scale": kv_cache.k_scale, "v_scale": kv_cache.v_scale}
    return {}


class PagedAttentionBackend:
    """A backend written as its parts; ``forward`` runs them in the contract's order.

    The usual backend is two kernels with one shared signature (``cpu_paged``, ``triton``)::

        kernel(q, k_cache, v_cache, out, rows, query_start_loc, seq_lens, page_table,
               page_size, scale, [max_query_len=], [k_scale=, v_scale=])   -> fills out[rows]

    Such a subclass only sets ``decode_kernel`` and ``extend_kernel``; int8 scales are passed
    only for an int8 layer, so a kernel without them must refuse int8 in ``check_supported``.
    A backend that is not a kernel pair (``torch_backend``: gather + SDPA) overrides
    ``forward_decode`` and ``forward_extend`` instead. ``check_supported`` refuses, at engine
    construction, a model shape or dtype the implementation cannot run.
    """

    name = "paged"
    supports_decode_graphs: ClassVar[bool] = False
    """True when a decode step through this backend can be compiled or captured as a graph
    (``models/decode_graph.py``): its decode reads no host-side copy of the batch (the
    ``*_cpu`` lists), calls only registered ops, and runs the same ops for the same shapes."""
    decode_kernel: Callable[..., None]
    extend_kernel: Callable[..., None]

    def __init__(self) -> None:
        self.metadata: AttentionMetadata | None = None

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
        assert self.metadata is not None
        k_cache, v_cache = kv_cache
        self.decode_kernel(
            *(q, k_cache, v_cache, out, self.metadata.decode_rows, batch.query_start_loc),
            *(batch.seq_lens, batch.page_table, batch.page_size, scale),
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
        """Fill ``out`` at the tokens of every row in ``metadata.extend_rows``."""
        assert self.metadata is not None
        k_cache, v_cache = kv_cache
        self.extend_kernel(
            *(q, k_cache, v_cache, out, self.metadata.extend_rows, batch.query_start_loc),
            *(batch.seq_lens, batch.page_table, batch.page_size, scale),
            max_query_len=self.metadata.max_query_len,
            **int8_scales(kv_cache),
        )

    def attend(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        scale: float,
        decode: DecodeFn | None = None,
    ) -> torch.Tensor:
        """Decode rows, then extend rows, into a new ``[T, Hq, D]``; ``decode`` replaces
        ``forward_decode`` (a research wrapper choosing which keys decode reads)."""
        meta = self.metadata
        if meta is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(batch) must run before forward")
        out = torch.empty_like(q)
        if meta.decode_rows_cpu:
            (decode or self.forward_decode)(q, kv_cache, out, batch, scale)
        if meta.extend_rows_cpu:
            self.forward_extend(q, kv_cache, out, batch, scale)
        return out

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: KVCache,
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        if self.metadata is None:
            raise RuntimeError(f"{type(self).__name__}.prepare(batch) must run before forward")
        self.store_kv(k, v, kv_cache, batch)
        return self.attend(q, kv_cache, batch, scale)


PagedKernelBackend = PagedAttentionBackend
"""The earlier name of the kernel-pair base class, now ``PagedAttentionBackend`` itself."""
