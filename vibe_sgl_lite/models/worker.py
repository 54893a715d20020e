"""``ModelWorker``: the model (or one rank's shard of it) with its KV pool: one forward per step.

    rows of one step (BatchRow: token ids, start position, page table, sample?)
      -> ForwardBatch.build                flat tensors, no padding        (batch/)
      -> attention.prepare(batch)          per-step metadata, once         (kernels/)
      -> lora.prepare(batch)               adapters into slots (only with enable_lora)
      -> model(batch, kv_pool, attention)  logits of the sampling rows     (models/)

With ``enable_torch_compile`` (CPU) or ``enable_cuda_graph`` (CUDA), a step of plain decode rows
replays a captured graph of that whole path instead (``decode_graph.py``).

The engine's executors own one (``core/executor.py``: in this process) or one per worker process
(``distributed/``: tensor, expert and pipeline parallelism, where ``shard`` cuts the model to a
rank's part before its weights are read; a pipeline stage's KV pool holds only its layers). Every one of them is built from the same ``WorkerSpec``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.models.decode_graph import DecodeGraphRunner, graph_capture
from vibe_sgl_lite.models.decoder import DecoderForCausalLM
from vibe_sgl_lite.models.loader import load_model
from vibe_sgl_lite.models.lora import LoRAManager


@dataclass(frozen=True)
class WorkerSpec:
    """What a ``ModelWorker`` is built from: the engine writes it once and every executor passes
    it on (pickled to a worker process; under torchrun, ``num_pages`` is rank 0's)."""

    model_path: str | Path
    config: EngineConfig
    num_pages: int
    attention: AttentionBackend


class ModelWorker:
    """One forward per step on a model and its KV pool; in a single process it is the
    engine's executor itself (``core/executor.py``)."""

    is_driver = True

    def __init__(
        self,
        spec: WorkerSpec,
        *,
        shard: Callable[[DecoderForCausalLM], None] | None = None,
        device: torch.device | None = None,
    ) -> None:
        config = spec.config
        self.device = device if device is not None else torch.device(config.device)
        self.page_size = config.page_size
        self.attention = spec.attention
        self.model, self.model_config = load_model(
            spec.model_path,
            config.dtype,
            self.device,
            shard=shard,
            quantization=config.quantization,
            weight_layout=config.weight_layout,
            fp32_gemm_max_rows=config.fp32_gemm_max_rows,
        )
        layers = self.model.layer_range  # all of them, unless this is one pipeline stage
        capture = graph_capture(config, self.device)
        self.lora = (
            LoRAManager(self.model, config, self.model_config, self.device)
            if config.enable_lora
            else None
        )
        self.kv_pool = KVPool(
            len(layers),
            spec.num_pages + (capture is not None),  # + the padding rows' scratch page
            config.page_size,
            self.model.num_local_kv_heads,
            self.model_config.head_dim,
            config.kv_torch_dtype,
            self.device,
            first_layer=layers.start,
        )
        self.graphs: DecodeGraphRunner | None = None
        if capture is not None:
            if not getattr(self.attention, "supports_decode_graphs", False):
                raise ValueError(
                    "enable_torch_compile / enable_cuda_graph: attention backend "
                    f"{type(self.attention).__name__} cannot run in a captured graph (its "
                    "supports_decode_graphs is not set); use cpu_paged or triton"
                )
            method, max_batch_size = capture
            self.graphs = DecodeGraphRunner(
                self.model, self.kv_pool, self.attention, method, max_batch_size, spec.num_pages
            )

    @torch.inference_mode()
    def forward(self, rows: Sequence[BatchRow]) -> torch.Tensor:
        """One forward over ``rows``; float32 logits ``[num sampling rows, vocab]``."""
        if self.graphs is not None and self.graphs.can_run(rows, self.attention):
            replayed = self.graphs.forward(rows)
            if replayed is not None:
                return replayed
        batch = ForwardBatch.build(rows, self.page_size, self.device)
        self.prepare(batch)
        logits: torch.Tensor = self.model(batch, self.kv_pool, self.attention)
        return logits

    execute = forward

    def prepare(self, batch: ForwardBatch) -> None:
        """The step's metadata, once before the layers: the attention backend's, and the LoRA
        adapters' slots and token groups (only with ``enable_lora``)."""
        self.attention.prepare(batch)
        if self.lora is not None:
            self.lora.prepare(batch)

    @torch.inference_mode()
    def forward_with_hidden(self, rows: Sequence[BatchRow]) -> tuple[torch.Tensor, ForwardBatch]:
        """``forward``, also keeping every token's final hidden state in the returned batch's
        ``hidden_states [T, hidden]`` (an EAGLE head drafts from them)."""
        batch = ForwardBatch.build(rows, self.page_size, self.device)
        batch.return_hidden = True
        self.prepare(batch)
        logits: torch.Tensor = self.model(batch, self.kv_pool, self.attention)
        return logits, batch

    def close(self) -> None:
        """Nothing to stop: the model and pool go with the worker."""
