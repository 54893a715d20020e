"""Adding an attention method: read only the first page and the last few pages of a context.

python examples/sparse_attention_method.py

A method subclasses ``AttentionMethod`` and answers ``select(view)``: per decode row and KV head,
which token positions to read. ``KVSelection.from_positions`` turns positions into pool slots,
and every backend (torch, reference, triton) then reads exactly those keys. This one is a
page-granular cousin of StreamingLLM; ``get_stats()`` reports the share of the KV it read.
"""

from __future__ import annotations

import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.kernels.sparse import AttentionMethod, DecodeView, KVSelection


class FirstAndRecentPages(AttentionMethod):
    name = "first_and_recent_pages"

    def __init__(self, recent_pages: int = 2) -> None:
        super().__init__()
        self.recent_pages = recent_pages

    def select(self, view: DecodeView) -> KVSelection:
        ps = view.page_size
        lens = view.seq_lens[:, None]  # [Bd, 1]
        pos = torch.arange(max(view.seq_lens_cpu))[None, :]  # [1, L]
        recent_start = ((lens - 1) // ps - self.recent_pages + 1).clamp(min=0) * ps
        keep = (pos < lens) & ((pos < ps) | (pos >= recent_start))  # [Bd, L]
        shape = (view.num_rows, view.num_kv_heads, pos.shape[1])  # same choice for every head
        positions = pos.expand(view.num_rows, -1)[:, None].expand(shape)
        return KVSelection.from_positions(view, positions, keep[:, None].expand(shape))


def main() -> None:
    prompts = ["ROMEO: What light through yonder window breaks?", "JULIET: O Romeo, Romeo,"]
    greedy = SamplingParams(max_tokens=40, temperature=0)
    with ModelRunner(page_size=8) as dense:
        expected = dense.generate(prompts[0], max_tokens=40, temperature=0)
    with ModelRunner(page_size=8, attention_method=FirstAndRecentPages(2)) as runner:
        outs = runner.generate_outputs(prompts, greedy)
        print(repr(outs[0].text))
        print("same text as dense:", outs[0].text == expected)
        print(f"KV read: {runner.get_stats()['attention_kv_read_fraction']:.2f}")


if __name__ == "__main__":
    main()
