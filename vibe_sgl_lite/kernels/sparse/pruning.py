"""Token pruning: drop a long context's least-attended tokens from all future reads.

Every decode step, for every layer, the pruner adds each key's attention probability (summed
over heads) to that token's running score (the "heavy hitter" statistic of H2O, Zhang et al.,
2023). After the step the engine asks ``plan`` which tokens to drop: a request keeps
``max(min_tokens_after_pruning, ceil((1 - pruning_ratio) * context))`` tokens, the lowest-scored
ones go, and the current page is never touched. Dropped tokens are left out of every later
decode read (``restrict`` turns them into a ``KVSelection``); the engine frees a page once all
its tokens are dropped *and* the request is its only holder. Pages the prefix cache shares are
never freed or changed: their tokens are only skipped by this request.

    context   [sink | a b c d | e f g h | i j k l | m n _ _ ]     page_size 4
    scores       9    1 7 0 2   0 0 1 0   5 3 8 6   (current page: kept)
    keep 10 ->   x    . x . .   . . . .   x x x x   x x           page "e f g h": freed

Scores need the probabilities over the whole kept context in every layer, so a pruning run
reads the KV twice per step: a research feature, not a speed-up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from vibe_sgl_lite.kernels.sparse.method import DecodeView, KVSelection
from vibe_sgl_lite.utils.settings import check_fraction, check_int


@dataclass
class PruneState:
    scores: torch.Tensor  # [capacity] float32: accumulated attention mass per position
    pruned: torch.Tensor  # [capacity] bool: dropped from future reads
    num_pruned: int = 0

    def grow(self, length: int) -> None:
        if length > self.scores.shape[0]:
            extra = max(length, 2 * self.scores.shape[0]) - self.scores.shape[0]
            self.scores = torch.cat([self.scores, self.scores.new_zeros(extra)])
            self.pruned = torch.cat([self.pruned, self.pruned.new_zeros(extra)])


class TokenPruner:
    def __init__(self, pruning_ratio: float, min_tokens_after_pruning: int) -> None:
        self.ratio = check_fraction("pruning_ratio", pruning_ratio, allow_zero=True)
        if self.ratio >= 1.0:
            raise ValueError(f"pruning_ratio must be in [0, 1), got {pruning_ratio!r}")
        self.min_tokens = check_int("min_tokens_after_pruning", min_tokens_after_pruning, minimum=1)
        self.states: dict[int, PruneState] = {}

    def _state(self, request_id: int, length: int) -> PruneState:
        state = self.states.get(request_id)
        if state is None:
            state = PruneState(torch.zeros(length), torch.zeros(length, dtype=torch.bool))
            self.states[request_id] = state
        state.grow(length)
        return state

    def restrict(self, view: DecodeView, selection: KVSelection | None) -> KVSelection | None:
        """``selection`` (``None``: every key) without the rows' pruned positions."""
        pruned = [self.states.get(rid) for rid in view.request_ids]
        if not any(s is not None and s.num_pruned for s in pruned):
            return selection
        lmax = max(view.seq_lens_cpu)
        if selection is None:
            pos = torch.arange(lmax, device=view.q.device).expand(view.num_rows, lmax)
            valid = pos < view.seq_lens[:, None]
            positions = pos[:, None].expand(-1, view.num_kv_heads, -1)
            keep = valid[:, None].expand_as(positions)
        else:
            positions = selection.positions
            keep = self._read_mask(selection)
        dropped = torch.zeros(view.num_rows, lmax, dtype=torch.bool)
        for i, state in enumerate(pruned):
            if state is not None and state.num_pruned:
                n = min(lmax, state.pruned.shape[0])
                dropped[i, :n] = state.pruned[:n]
        keep = keep & ~torch.gather(dropped.to(positions.device), 1, positions.flatten(1)).view_as(
            positions
        )
        return KVSelection.from_positions(view, positions, keep)

    @staticmethod
    def _read_mask(selection: KVSelection) -> torch.Tensor:
        """``[Bd, Hkv, N]``: True for the valid entries of a selection."""
        n = selection.slots.shape[-1]
        rank = torch.arange(n, device=selection.slots.device)[None, None, :]
        return rank < selection.lengths[..., None]

    def observe(self, view: DecodeView, selection: KVSelection | None) -> None:
        """Add this layer's attention probabilities (over what was read) to each token's score."""
        keys, valid = view.keys(torch.float32)  # [Bd, L, Hkv, D]
        if selection is not None:
            counts = torch.zeros(view.num_rows, view.num_kv_heads, keys.shape[1], dtype=torch.int32)
            counts.scatter_add_(2, selection.positions, self._read_mask(selection).int())
            read = counts > 0
        else:
            read = valid[:, None, :].expand(-1, view.num_kv_heads, -1)
        scores = torch.einsum("bhgd,blhd->bhgl", view.grouped_q.float(), keys) * view.scale
        scores = scores.masked_fill(~read[:, :, None, :], -math.inf)
        mass = scores.softmax(dim=-1).sum(dim=(1, 2))  # [Bd, L]
        for i, (rid, length) in enumerate(zip(view.request_ids, view.seq_lens_cpu)):
            state = self._state(rid, length)
            state.scores[:length] += mass[i, :length].cpu()

    def plan(self, request_id: int, length: int, page_size: int) -> list[int]:
        """Prune ``request_id`` (context ``length``) to its budget; returns the newly pruned
        positions. The current (last, possibly partial) page is never pruned."""
        keep = max(self.min_tokens, math.ceil((1.0 - self.ratio) * length))
        state = self.states.get(request_id)
        if state is None or self.ratio == 0.0 or length - state.num_pruned <= keep:
            return []
        protected_from = (length - 1) // page_size * page_size
        candidates = (~state.pruned[:protected_from]).nonzero().squeeze(1)
        excess = min(length - state.num_pruned - keep, candidates.numel())
        if excess <= 0:
            return []
        lowest = state.scores[candidates].topk(excess, largest=False).indices
        newly = candidates[lowest]
        state.pruned[newly] = True
        state.num_pruned += excess
        return sorted(newly.tolist())

    def fully_pruned_pages(self, request_id: int, length: int, page_size: int) -> list[int]:
        """Logical pages of ``request_id`` whose every token is pruned."""
        state = self.states.get(request_id)
        if state is None or not state.num_pruned:
            return []
        full = length // page_size
        per_page = state.pruned[: full * page_size].view(full, page_size)
        return per_page.all(dim=1).nonzero().squeeze(1).tolist()

    def release(self, request_id: int) -> None:
        """Forget a request (finished, aborted, or preempted: its KV is recomputed whole)."""
        self.states.pop(request_id, None)
