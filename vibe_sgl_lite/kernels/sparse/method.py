"""The attention-method interface: choose which cached keys a decode step reads.

A backend stores the step's K/V, then, for the decode rows of a layer, asks that layer's method
``select(view)``. ``None`` means "read everything" (dense, the default: bit for bit the path
without a method). A ``KVSelection`` names, per decode row and KV head, the pool slots to read;
the backend attends over exactly those, and the fraction of KV read goes into ``get_stats()``.

    DecodeView                        what the method sees, one layer, Bd decode rows
      q           [Bd, Hq, D]         the rows' queries (after RoPE)
      kv          LayerKV             the layer's pool (k, v [num_slots, Hkv, D], int8 scales)
      page_table  [Bd, P]             each row's pages;  seq_lens [Bd]: keys per row
    KVSelection                       what it answers
      slots       [Bd, Hkv, N]        pool slots to read, valid ones first, ascending position
      lengths     [Bd, Hkv]           how many of the N are valid (>= 1)
      positions   [Bd, Hkv, N]        the token positions of those slots

Selections are token-granular; page-granular methods (Quest) expand their pages to tokens.
Extend rows (prompts, chunks) always read densely: the methods here are decode-time ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from vibe_sgl_lite.memory.kv_pool import LayerKV


@dataclass
class DecodeView:
    layer: int
    request_ids: list[int]
    q: torch.Tensor
    kv: LayerKV
    page_table: torch.Tensor
    seq_lens: torch.Tensor
    seq_lens_cpu: list[int]
    page_size: int
    scale: float

    @property
    def num_rows(self) -> int:
        return self.q.shape[0]

    @property
    def num_kv_heads(self) -> int:
        return self.kv.k.shape[1]

    @property
    def grouped_q(self) -> torch.Tensor:
        """``q`` as ``[Bd, Hkv, group, D]``: the query heads that share each KV head."""
        bd, hq, d = self.q.shape
        return self.q.view(bd, self.num_kv_heads, hq // self.num_kv_heads, d)

    def slots_of(self, positions: torch.Tensor) -> torch.Tensor:
        """Pool slots of token ``positions [Bd, ...]`` of each row, through the page table."""
        bd = positions.shape[0]
        flat = positions.reshape(bd, -1)
        pages = torch.gather(self.page_table, 1, flat // self.page_size)
        return (pages * self.page_size + flat % self.page_size).view(positions.shape)

    def keys(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's keys ``[Bd, Lmax, Hkv, D]`` (dequantised) and validity ``[Bd, Lmax]``.

        A gathered copy: for methods that need true scores (the oracle), never for the path
        that reads the selection.
        """
        lmax = max(self.seq_lens_cpu)
        pos = torch.arange(lmax, device=self.q.device).expand(self.num_rows, lmax)
        valid = pos < self.seq_lens[:, None]
        slots = self.slots_of(torch.where(valid, pos, 0))
        k = self.kv.k.index_select(0, slots.reshape(-1))
        if self.kv.k_scale is not None:
            k = k.float() * self.kv.k_scale.index_select(0, slots.reshape(-1)).unsqueeze(-1)
        return k.to(dtype).view(self.num_rows, lmax, self.num_kv_heads, -1), valid


@dataclass
class KVSelection:
    slots: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor  # [Bd, Hkv, N] token position of each slot (for pruning, analysis)

    @classmethod
    def from_positions(
        cls, view: DecodeView, positions: torch.Tensor, valid: torch.Tensor
    ) -> KVSelection:
        """Keep ``positions [Bd, Hkv, N]`` where ``valid`` (same shape); valid ones first, in order."""
        if valid.shape != positions.shape:
            raise ValueError(f"valid {tuple(valid.shape)} != positions {tuple(positions.shape)}")
        big = torch.iinfo(torch.int64).max
        ordered, _ = torch.where(valid, positions, big).sort(dim=-1)
        lengths = valid.sum(-1)
        ordered = torch.where(ordered == big, 0, ordered)
        return cls(view.slots_of(ordered), lengths, ordered)

    def num_read(self) -> int:
        return int(self.lengths.sum())


def ceil_fraction(counts: torch.Tensor, ratio: float) -> torch.Tensor:
    """``ceil(counts * ratio)`` as int64, exact for decimal ratios: ``0.15 * 100`` is 15.

    In float32 (what int64 * float gives) 0.15 * 100 is 15.000001, one too many after ceil;
    float64 with a margin far below one count gets it right.
    """
    return torch.ceil(counts.double() * ratio - 1e-9).long()


@dataclass
class MethodStats:
    """Keys read against keys a dense read would touch, summed over layers and KV heads."""

    kv_read: int = 0
    kv_total: int = 0

    @property
    def kv_read_fraction(self) -> float:
        return self.kv_read / self.kv_total if self.kv_total else 1.0


class AttentionMethod:
    """Dense attention; subclasses override ``select`` (and ``observe_store`` to keep metadata).

    One instance serves every layer it is given to: per-layer state is keyed by ``view.layer``.
    """

    name = "dense"

    def __init__(self) -> None:
        self.stats = MethodStats()

    def observe_store(self, kv: LayerKV, slot_mapping: torch.Tensor, page_size: int) -> None:
        """Called after the step's K/V were stored at ``slot_mapping [T]`` of layer ``kv``."""

    def select(self, view: DecodeView) -> KVSelection | None:
        """The keys each decode row and KV head reads; ``None``: all of them."""
        return None

    def record(self, view: DecodeView, selection: KVSelection | None) -> None:
        total = sum(view.seq_lens_cpu) * view.num_kv_heads
        self.stats.kv_total += total
        self.stats.kv_read += total if selection is None else selection.num_read()


@dataclass
class CapturedScores:
    """Raw pre-softmax scores ``scale * q . k`` of one request's decode token in one layer.

    ``scores``: ``[num_heads, kv_len]``, over the request's whole context.
    """

    request_id: int
    layer: int
    scores: torch.Tensor


@dataclass
class ScoreCapture:
    """Collects ``CapturedScores`` while installed on a backend (``runner.capture_attention``)."""

    layers: frozenset[int] | None = None
    records: list[CapturedScores] = field(default_factory=list)

    def wants(self, layer: int) -> bool:
        return self.layers is None or layer in self.layers

    def capture(self, view: DecodeView) -> None:
        keys, _ = view.keys(torch.float32)  # [Bd, Lmax, Hkv, D]
        group = view.q.shape[1] // view.num_kv_heads
        for i, (request_id, kv_len) in enumerate(zip(view.request_ids, view.seq_lens_cpu)):
            k = keys[i, :kv_len].repeat_interleave(group, dim=1)  # [L, Hq, D]
            scores = torch.einsum("hd,lhd->hl", view.q[i].float(), k) * view.scale
            self.records.append(CapturedScores(request_id, view.layer, scores))


def attend_selection(view: DecodeView, selection: KVSelection) -> torch.Tensor:
    """Decode attention over the selected keys only, in torch: ``[Bd, Hq, D]``.

    Gathers ``[Bd, Hkv, N, D]`` (N is the budget, not the context), so it stays small; the
    Triton backend passes the same slots to its kernel as a per-head page table instead.
    """
    bd, heads, n = selection.slots.shape
    dim = view.q.shape[-1]
    head = torch.arange(heads, device=view.q.device)[None, :, None]
    flat = (selection.slots * heads + head).reshape(-1)  # row of the [num_slots * Hkv, D] view
    k = view.kv.k.reshape(-1, dim).index_select(0, flat).float().view(bd, heads, n, dim)
    v = view.kv.v.reshape(-1, dim).index_select(0, flat).float().view(bd, heads, n, dim)
    if view.kv.k_scale is not None and view.kv.v_scale is not None:
        k = k * view.kv.k_scale.reshape(-1).index_select(0, flat).view(bd, heads, n, 1)
        v = v * view.kv.v_scale.reshape(-1).index_select(0, flat).view(bd, heads, n, 1)
    scores = torch.einsum("bhgd,bhnd->bhgn", view.grouped_q.float(), k) * view.scale
    unread = torch.arange(n, device=k.device)[None, None, :] >= selection.lengths[..., None]
    scores = scores.masked_fill(unread[:, :, None, :], float("-inf"))
    out = torch.einsum("bhgn,bhnd->bhgd", scores.softmax(dim=-1), v)
    return out.reshape(bd, -1, dim).to(view.q.dtype)
