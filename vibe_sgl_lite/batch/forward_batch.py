"""``ForwardBatch``: everything one model forward needs, as a handful of flat tensors.

Several prefills (or prefill chunks) and many decodes run as ONE forward with no padding:

    request      A (prefill 4)      B (decode)   C (chunk of 3)
    input_ids    a0 a1 a2 a3        b7           c4 c5 c6            [T = 8]
    positions    0  1  2  3         7            4  5  6             [T]
    query_start_loc  0, 4, 5, 8                                      [B + 1]
    seq_lens         4, 8, 7      (KV length after this step)        [B]
    slot_mapping     where each new token's K/V is written in the pool [T]
    page_table       row b = the pages of request b, padded with 0   [B, max_pages]
    sample_indices   last token of each row that finishes its prompt or decodes [S]
                     (a speculative verify row: each of its last k + 1 tokens)
    adapters         each row's LoRA adapter (None: the base model)  [B], only with LoRA
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(frozen=True)
class AdapterRef:
    """The LoRA adapter a row runs under (``models/lora/``).

    ``uid`` is unique for the engine's lifetime: an adapter unloaded and loaded again under the
    same name gets a new one, so nothing cached for the old weights (worker copies, prefix-cache
    pages) is ever taken for the new. ``path`` is its PEFT folder, which a worker reads the first
    time it meets ``uid`` (each rank its own shard), so rows alone tell every worker what to load.
    """

    uid: int
    path: str


@dataclass
class BatchRow:
    """One sequence's share of a step: ``token_ids`` start at position ``start_pos``.

    ``sample``: return the logits of the last ``num_logits`` tokens (1; a speculative verify row,
    whose tokens are the last accepted one and ``k`` proposed ones: ``k + 1``). ``all_logits``:
    return the logits of every token of the row instead (scoring a text, e.g. for perplexity). ``request_id`` lets
    per-request research hooks (token pruning, score capture) follow a request across steps.
    A negative page-table entry is a page token pruning freed: never read, stored as 0.
    ``lora``: the adapter of the row (``None``: the base model).
    """

    token_ids: Sequence[int]
    start_pos: int
    page_table: Sequence[int]
    sample: bool
    all_logits: bool = False
    request_id: int = -1
    num_logits: int = 1
    lora: AdapterRef | None = None


@dataclass
class ForwardBatch:
    input_ids: torch.Tensor
    positions: torch.Tensor
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    slot_mapping: torch.Tensor
    page_table: torch.Tensor
    sample_indices: torch.Tensor
    page_size: int
    query_lens_cpu: list[int]
    seq_lens_cpu: list[int]
    request_ids: list[int] = field(default_factory=list)
    # Set to ask the model for every token's final hidden state (after the last norm), which it
    # leaves in ``hidden_states [T, hidden]``: an EAGLE head drafts from them (speculative/).
    return_hidden: bool = False
    hidden_states: torch.Tensor | None = None
    adapters: list[AdapterRef | None] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens_cpu)

    @classmethod
    def build(cls, rows: Sequence[BatchRow], page_size: int, device: torch.device) -> ForwardBatch:
        if not rows:
            raise ValueError("a forward batch needs at least one row")
        input_ids: list[int] = []
        positions: list[int] = []
        query_start = [0]
        seq_lens: list[int] = []
        sample_indices: list[int] = []
        for row in rows:
            n = len(row.token_ids)
            input_ids.extend(row.token_ids)
            positions.extend(range(row.start_pos, row.start_pos + n))
            query_start.append(query_start[-1] + n)
            seq_lens.append(row.start_pos + n)
            if row.all_logits:
                sample_indices.extend(range(query_start[-2], query_start[-1]))
            elif row.sample:
                sample_indices.extend(range(query_start[-1] - row.num_logits, query_start[-1]))
        max_pages = max(len(r.page_table) for r in rows)
        table = [
            [max(p, 0) for p in r.page_table] + [0] * (max_pages - len(r.page_table)) for r in rows
        ]

        def tensor(data: Any) -> torch.Tensor:
            return torch.tensor(data, dtype=torch.int64, device=device)

        page_table = tensor(table)
        positions_t = tensor(positions)
        query_lens = [b - a for a, b in zip(query_start, query_start[1:])]
        row_of_token = torch.repeat_interleave(
            torch.arange(len(rows), device=device), tensor(query_lens)
        )
        pages = page_table[row_of_token, positions_t // page_size]
        return cls(
            input_ids=tensor(input_ids),
            positions=positions_t,
            query_start_loc=tensor(query_start),
            seq_lens=tensor(seq_lens),
            slot_mapping=pages * page_size + positions_t % page_size,
            page_table=page_table,
            sample_indices=tensor(sample_indices),
            page_size=page_size,
            query_lens_cpu=query_lens,
            seq_lens_cpu=seq_lens,
            request_ids=[r.request_id for r in rows],
            adapters=[r.lora for r in rows],
        )
