"""Quest (Tang et al., 2024): read only the pages whose keys can score high for this query.

Per page and KV head the method keeps the channel-wise minimum and maximum of the page's keys.
For a query ``q``, ``sum_d max(q_d * max_d, q_d * min_d)`` is an upper bound of ``q . k`` for
every key in the page, so the pages with the largest bounds are the ones worth reading::

    page            0      1      2      3      4 (current, filling)
    bound (q)      9.1    0.3    4.2    1.7    2.0        budget 3 -> pages 0, 2, 4
                  first                      current       always kept

Metadata upkeep is one scatter per layer per step (``observe_store``): a page whose slot 0 is
being written is new to its owner (fresh, reused after a free, or recomputed after preemption),
so its bounds restart from the new keys; otherwise the new keys widen them. Pages shared through
the prefix cache are full and never written again, so their bounds stay right for every request
that reads them. With GQA the bounds of a KV head's query heads are summed.
"""

from __future__ import annotations

import math

import torch

from vibe_sgl_lite.kernels.sparse.method import (
    AttentionMethod,
    DecodeView,
    KVSelection,
    ceil_fraction,
)
from vibe_sgl_lite.memory.kv_pool import LayerKV
from vibe_sgl_lite.utils.settings import check_fraction, check_int


class QuestAttention(AttentionMethod):
    name = "quest"

    def __init__(self, budget: int | None = None, selection_ratio: float | None = None) -> None:
        super().__init__()
        if (budget is None) == (selection_ratio is None):
            raise ValueError(
                "quest needs exactly one of budget (pages, an integer >= 2) or "
                f"selection_ratio (in (0, 1]); got {budget!r} and {selection_ratio!r}"
            )
        self.budget = None if budget is None else check_int("budget", budget, minimum=2)
        self.ratio = (
            None if selection_ratio is None else check_fraction("selection_ratio", selection_ratio)
        )
        self.key_min: dict[int, torch.Tensor] = {}  # layer -> [num_pages, Hkv, D] float32
        self.key_max: dict[int, torch.Tensor] = {}

    def observe_store(self, kv: LayerKV, slot_mapping: torch.Tensor, page_size: int) -> None:
        num_slots, heads, dim = kv.k.shape
        if kv.index not in self.key_min:
            shape = (num_slots // page_size, heads, dim)
            self.key_min[kv.index] = torch.full(shape, math.inf, device=kv.k.device)
            self.key_max[kv.index] = torch.full(shape, -math.inf, device=kv.k.device)
        kmin, kmax = self.key_min[kv.index], self.key_max[kv.index]
        keys = kv.k.index_select(0, slot_mapping).float()  # [T, Hkv, D], as stored
        if kv.k_scale is not None:
            keys = keys * kv.k_scale.index_select(0, slot_mapping).unsqueeze(-1)
        pages = slot_mapping // page_size
        fresh = pages[slot_mapping % page_size == 0]
        kmin.index_fill_(0, fresh, math.inf)
        kmax.index_fill_(0, fresh, -math.inf)
        index = pages[:, None, None].expand_as(keys)
        kmin.scatter_reduce_(0, index, keys, "amin")
        kmax.scatter_reduce_(0, index, keys, "amax")

    def page_bounds(self, view: DecodeView) -> torch.Tensor:
        """Upper bound of ``q . k`` per row, logical page and KV head: ``[Bd, P, Hkv]``."""
        q = view.grouped_q.float()[:, None]  # [Bd, 1, Hkv, G, D]
        kmin = self.key_min[view.layer][view.page_table][:, :, :, None]  # [Bd, P, Hkv, 1, D]
        kmax = self.key_max[view.layer][view.page_table][:, :, :, None]
        return torch.maximum(q * kmax, q * kmin).sum(dim=(-1, -2))

    def num_pages_kept(self, num_pages: torch.Tensor) -> torch.Tensor:
        if self.budget is not None:
            return num_pages.clamp(max=self.budget)
        assert self.ratio is not None
        return ceil_fraction(num_pages, self.ratio).clamp(min=2).minimum(num_pages)

    def select(self, view: DecodeView) -> KVSelection:
        ps = view.page_size
        num_pages = (view.seq_lens + ps - 1) // ps  # [Bd]
        bounds = self.page_bounds(view)  # [Bd, P, Hkv]
        page_idx = torch.arange(bounds.shape[1], device=bounds.device)[None, :, None]
        last = (num_pages - 1)[:, None, None]
        bounds = torch.where((page_idx == 0) | (page_idx == last), math.inf, bounds)
        bounds = torch.where(page_idx > last, -math.inf, bounds)
        kept = self.num_pages_kept(num_pages)  # [Bd]
        k = int(kept.max())
        chosen = bounds.topk(k, dim=1).indices.transpose(1, 2)  # [Bd, Hkv, k] logical pages
        rank = torch.arange(k, device=bounds.device)
        chosen_ok = rank[None, None, :] < kept[:, None, None]
        offsets = torch.arange(ps, device=bounds.device)
        positions = (chosen[..., None] * ps + offsets).flatten(2)  # [Bd, Hkv, k * ps]
        valid = chosen_ok[..., None].expand(-1, -1, -1, ps).flatten(2)
        valid = valid & (positions < view.seq_lens[:, None, None])
        return KVSelection.from_positions(view, positions, valid)
