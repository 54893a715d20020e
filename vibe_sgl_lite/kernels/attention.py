"""Attention over the paged KV cache, in plain torch (CPU and GPU).

Every backend does two things per layer:

1. **store**: write this step's new K/V into the pool at ``batch.slot_mapping``;
2. **attend**: each query token attends to its own sequence's KV, read through the page table,
   causally (a query at position ``p`` sees keys ``0..p``).

The store happens before the reads, for all sequences of the batch: a request may therefore read
pages that another request of the same batch is writing in this very forward (the prefix cache
relies on this to share a prompt prefix inside one batch). Any backend must keep that order.

The torch backend splits the batch into groups of rows that pad well together: decode rows (one
query token each) and prefill rows (several), each bucketed by the next power of two of their
KV length (and query length), so no row is padded to more than twice its size even when an
8k-token prompt shares a step with short ones. Each group gathers its KV through a precomputed
index ``[rows, max_kv]`` and runs one ``scaled_dot_product_attention`` with a boolean mask:

    query i of a row with kv_len L and q_len Q sits at position L - Q + i
    key j is visible  <=>  j <= L - Q + i
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from vibe_sgl_lite.batch.forward_batch import ForwardBatch


class AttentionBackend(Protocol):
    """What a model layer needs from an attention implementation.

    ``ModelWorker.forward`` calls ``prepare(batch)`` once per step, before the model runs; the
    backend keeps whatever it derives from the batch (index tensors, masks, kernel launch
    parameters) on itself, and every layer's ``forward`` of that step reuses it.
    """

    def prepare(self, batch: ForwardBatch) -> None:
        """Build this step's metadata once, for every layer's ``forward`` to reuse."""
        ...

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        """``q: [T, Hq, D]``, ``k, v: [T, Hkv, D]``, caches ``[num_slots, Hkv, D]`` -> ``[T, Hq, D]``."""
        ...


@dataclass
class RowGroup:
    """Rows attended together: gather indices and mask, shapes given per field."""

    q_index: torch.Tensor  # [G * max_q] flat token index of each (row, query) slot
    kv_slots: torch.Tensor  # [G * max_kv] pool slot of each (row, key) position
    mask: torch.Tensor | None  # [G, 1, max_q, max_kv] True where visible; None: all visible
    valid: torch.Tensor  # [num_valid] positions in ``q_index`` that are real tokens
    out_index: torch.Tensor  # [num_valid] their flat token index: ``q_index[valid]``
    shape: tuple[int, int, int]  # (G, max_q, max_kv)


def build_row_group(batch: ForwardBatch, rows: list[int]) -> RowGroup:
    device = batch.input_ids.device
    r = torch.tensor(rows, dtype=torch.int64, device=device)
    q_lens = torch.tensor([batch.query_lens_cpu[i] for i in rows], device=device)
    kv_lens = batch.seq_lens[r]
    max_q = max(batch.query_lens_cpu[i] for i in rows)
    max_kv = max(batch.seq_lens_cpu[i] for i in rows)
    qi = torch.arange(max_q, device=device)
    kj = torch.arange(max_kv, device=device)
    q_valid = qi[None, :] < q_lens[:, None]
    q_index = (batch.query_start_loc[r][:, None] + qi[None, :]).clamp(max=batch.num_tokens - 1)
    page_cols = (kj // batch.page_size).clamp(max=batch.page_table.shape[1] - 1)
    kv_slots = batch.page_table[r][:, page_cols] * batch.page_size + kj % batch.page_size
    q_pos = (kv_lens - q_lens)[:, None] + qi[None, :]  # [G, max_q]
    mask = kj[None, None, :] <= q_pos[:, :, None]
    mask |= ~q_valid[:, :, None] & (kj == 0)[None, None, :]  # padding rows: avoid all-masked NaNs
    valid = q_valid.view(-1).nonzero().squeeze(1)
    q_index = q_index.reshape(-1)
    # Decode rows of equal length see every key: no mask lets SDPA take its fastest kernel.
    dense_mask = None if bool(mask.all()) else mask.unsqueeze(1)
    shape = (len(rows), max_q, max_kv)
    return RowGroup(q_index, kv_slots.reshape(-1), dense_mask, valid, q_index[valid], shape)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class TorchPagedAttention:
    """The reference backend: gather through page tables, then ``scaled_dot_product_attention``."""

    name = "torch"

    def __init__(self) -> None:
        self.groups: list[RowGroup] = []  # this step's row groups, built by ``prepare``

    def prepare(self, batch: ForwardBatch) -> None:
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (q_len, kv_len) in enumerate(zip(batch.query_lens_cpu, batch.seq_lens_cpu)):
            key = (_next_pow2(q_len), _next_pow2(kv_len))
            buckets.setdefault(key, []).append(i)
        self.groups = [build_row_group(batch, rows) for rows in buckets.values()]

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        batch: ForwardBatch,
        scale: float,
    ) -> torch.Tensor:
        k_cache, v_cache = kv_cache
        # index_copy_/index_select: the plain-index kernels, much cheaper on CPU than
        # advanced-indexing assignment and gather.
        k_cache.index_copy_(0, batch.slot_mapping, k.to(k_cache.dtype))
        v_cache.index_copy_(0, batch.slot_mapping, v.to(v_cache.dtype))
        out = torch.empty_like(q)
        num_heads, head_dim = q.shape[1], q.shape[2]
        gqa = num_heads != k.shape[1]
        for g in self.groups:
            rows, max_q, max_kv = g.shape
            qg = q.index_select(0, g.q_index).view(rows, max_q, num_heads, head_dim)
            kg = k_cache.index_select(0, g.kv_slots).view(rows, max_kv, -1, head_dim)
            vg = v_cache.index_select(0, g.kv_slots).view(rows, max_kv, -1, head_dim)
            o = F.scaled_dot_product_attention(
                qg.transpose(1, 2),  # [G, Hq, max_q, D]
                kg.to(q.dtype).transpose(1, 2),  # [G, Hkv, max_kv, D]
                vg.to(q.dtype).transpose(1, 2),
                attn_mask=g.mask,
                scale=scale,
                enable_gqa=gqa,
            )
            o = o.transpose(1, 2).reshape(rows * max_q, num_heads, head_dim)
            out.index_copy_(0, g.out_index, o.index_select(0, g.valid))
        return out


ATTENTION_BACKENDS: dict[str, type[AttentionBackend]] = {"torch": TorchPagedAttention}


def get_attention_backend(name_or_backend: str | AttentionBackend) -> AttentionBackend:
    if not isinstance(name_or_backend, str):
        return name_or_backend
    if name_or_backend not in ATTENTION_BACKENDS:
        raise ValueError(
            f"attention_backend must be one of {', '.join(ATTENTION_BACKENDS)} "
            f"or an AttentionBackend object, got {name_or_backend!r}"
        )
    backend: AttentionBackend = ATTENTION_BACKENDS[name_or_backend]()
    return backend
