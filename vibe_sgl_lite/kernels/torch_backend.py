"""The reference backend: gather each row's K/V through its page table, then SDPA.

It is the easiest backend to check by eye, and every other backend is tested against it.
Rows are split into groups that pad well together: decode rows (one query token each) and
extend rows (several), each bucketed by the next power of two of their KV length (and query
length), so no row is padded to more than twice its size even when an 8k-token prompt shares a
step with short ones. Each group gathers its KV through a precomputed index ``[rows, max_kv]``
and runs one ``scaled_dot_product_attention`` with a boolean mask:

    query i of a row with kv_len L and q_len Q sits at position L - Q + i
    key j is visible  <=>  j <= L - Q + i

The gather copies every row's whole context in every layer of every step; the copy-free
backends (``cpu_paged``, ``triton``) exist to avoid exactly that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vibe_sgl_lite.batch.forward_batch import ForwardBatch
from vibe_sgl_lite.kernels.backend import KVCache, PagedAttentionBackend
from vibe_sgl_lite.memory.kv_pool import LayerKV, dequantize_int8


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


def gather_kv(
    kv_cache: KVCache, slots: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V at ``slots [N]`` as ``[N, Hkv, D]`` in ``dtype`` (dequantised if int8)."""
    k_cache, v_cache = kv_cache
    k, v = k_cache.index_select(0, slots), v_cache.index_select(0, slots)
    if isinstance(kv_cache, LayerKV) and kv_cache.k_scale is not None:
        assert kv_cache.v_scale is not None
        k = dequantize_int8(k, kv_cache.k_scale.index_select(0, slots), dtype)
        v = dequantize_int8(v, kv_cache.v_scale.index_select(0, slots), dtype)
    return k.to(dtype), v.to(dtype)


def _next_pow2(n: int) -> int:
    return 1 << (n - 1).bit_length()


class TorchPagedAttention(PagedAttentionBackend):
    """``attention_backend="torch_native"`` (or ``"reference"``): gather through page tables,
    then ``scaled_dot_product_attention``; the reference every other backend is tested against."""

    name = "torch_native"

    def __init__(self) -> None:
        super().__init__()
        self.decode_groups: list[RowGroup] = []  # this step's row groups, built by ``prepare``
        self.extend_groups: list[RowGroup] = []

    def prepare(self, batch: ForwardBatch) -> None:
        super().prepare(batch)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, (q_len, kv_len) in enumerate(zip(batch.query_lens_cpu, batch.seq_lens_cpu)):
            key = (_next_pow2(q_len), _next_pow2(kv_len))
            buckets.setdefault(key, []).append(i)
        groups = {key: build_row_group(batch, rows) for key, rows in buckets.items()}
        self.decode_groups = [g for (q, _), g in groups.items() if q == 1]
        self.extend_groups = [g for (q, _), g in groups.items() if q > 1]

    def forward_decode(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        self._attend(self.decode_groups, q, kv_cache, out, scale)

    def forward_extend(
        self,
        q: torch.Tensor,
        kv_cache: KVCache,
        out: torch.Tensor,
        batch: ForwardBatch,
        scale: float,
    ) -> None:
        self._attend(self.extend_groups, q, kv_cache, out, scale)

    @staticmethod
    def _attend(
        groups: list[RowGroup], q: torch.Tensor, kv_cache: KVCache, out: torch.Tensor, scale: float
    ) -> None:
        num_heads, head_dim = q.shape[1], q.shape[2]
        for g in groups:
            rows, max_q, max_kv = g.shape
            qg = q.index_select(0, g.q_index).view(rows, max_q, num_heads, head_dim)
            kg, vg = gather_kv(kv_cache, g.kv_slots, q.dtype)
            kg, vg = kg.view(rows, max_kv, -1, head_dim), vg.view(rows, max_kv, -1, head_dim)
            o = F.scaled_dot_product_attention(
                qg.transpose(1, 2),  # [G, Hq, max_q, D]
                kg.transpose(1, 2),  # [G, Hkv, max_kv, D]
                vg.transpose(1, 2),
                attn_mask=g.mask,
                scale=scale,
                enable_gqa=num_heads != kg.shape[2],
            )
            o = o.transpose(1, 2).reshape(rows * max_q, num_heads, head_dim)
            out.index_copy_(0, g.out_index, o.index_select(0, g.valid))
