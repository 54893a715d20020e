"""Model executors: where the forward pass runs.

The engine hands an executor the rows of one step (``BatchRow``s: plain token ids, positions and
page tables) and gets back the logits of the rows that sample. ``LocalExecutor`` runs the model in
this process; ``distributed.MultiprocessExecutor`` runs one shard per worker process (tensor and
expert parallelism) behind the same two methods, so the engine does not know which it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.core.config import EngineConfig
from vibe_sgl_lite.distributed.parallel_state import ParallelConfig
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.models.loader import load_model, resolve_dtype


class ModelExecutor(Protocol):
    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        """One forward over ``rows``; float32 logits ``[num sampling rows, vocab]``."""
        ...

    def close(self) -> None: ...


def kv_cache_dtype(config: EngineConfig) -> torch.dtype:
    return resolve_dtype(config.dtype if config.kv_cache_dtype == "auto" else config.kv_cache_dtype)


class ModelShard:
    """The model (or this rank's shard of it), its KV pool and the attention backend.

    ``parallel`` cuts the model for tensor/expert parallelism (``distributed/``); without it the
    whole model lives here.
    """

    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        num_pages: int,
        attention: AttentionBackend,
        parallel: ParallelConfig | None = None,
        device: torch.device | None = None,
    ) -> None:
        self.device = device if device is not None else torch.device(config.device)
        self.page_size, self.attention = config.page_size, attention
        self.model, mc = load_model(model_path, config.dtype, str(self.device), parallel=parallel)
        self.kv_pool = KVPool(
            mc.num_hidden_layers,
            num_pages,
            config.page_size,
            int(getattr(self.model, "num_local_kv_heads")),
            mc.head_dim,
            kv_cache_dtype(config),
            self.device,
        )

    @torch.inference_mode()
    def forward(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        """One forward over ``rows``; float32 logits ``[num sampling rows, vocab]``."""
        batch = ForwardBatch.build(rows, self.page_size, self.device)
        batch.attn_metadata = self.attention.prepare(batch)
        logits: torch.Tensor = self.model(batch, self.kv_pool, self.attention)
        return logits


class LocalExecutor(ModelShard):
    """The whole model in this process."""

    def execute(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        return self.forward(rows)

    def close(self) -> None:
        pass
