"""The per-step forward batch: flat token tensors plus the page tables attention needs."""

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch

__all__ = ["BatchRow", "ForwardBatch"]
