"""StreamingLLM (Xiao et al., 2023): the first ``num_sink_tokens`` keys plus a recent window.

The first tokens soak up attention no matter what they say ("attention sinks"); keeping them,
plus the last ``window`` tokens, keeps a model fluent over contexts far longer than the window::

    positions   0 1 2 3 | 4 ........................ L-w-1 | L-w ... L-1
                 sinks    dropped from reads                  recent window
"""

from __future__ import annotations

import torch

from vibe_sgl_lite.kernels.sparse.method import AttentionMethod, DecodeView, KVSelection
from vibe_sgl_lite.utils.settings import check_int


class StreamingAttention(AttentionMethod):
    name = "streaming"

    def __init__(self, num_sink_tokens: int = 4, window: int = 256) -> None:
        super().__init__()
        self.num_sink_tokens = check_int("num_sink_tokens", num_sink_tokens, minimum=0)
        self.window = check_int("attention_window", window, minimum=1)

    def select(self, view: DecodeView) -> KVSelection:
        keep = self.num_sink_tokens + self.window
        n = min(max(view.seq_lens_cpu), keep)
        idx = torch.arange(n, device=view.q.device)[None, :]  # [1, N]
        lens = view.seq_lens[:, None]  # [Bd, 1]
        shift = (lens - keep).clamp(min=0)  # keys skipped between the sinks and the window
        positions = torch.where(idx < self.num_sink_tokens, idx, idx + shift)  # [Bd, N]
        valid = idx < lens.clamp(max=keep)
        heads = view.num_kv_heads
        expand = (view.num_rows, heads, n)
        return KVSelection.from_positions(
            view, positions[:, None].expand(expand), valid[:, None].expand(expand)
        )
