"""Decode without Python between the ops: one graph per batch-size bucket, replayed.

A small model's decode step is mostly the interpreter: the bundled 4-layer model runs about a
hundred tensor ops a token, each a few microseconds of Python and dispatch around very little
arithmetic. A decode step has the same ops every time, though; only the batch size, and the
values in a handful of index tensors, change. So a step of ``B`` decode rows runs like this::

    rows (B decode rows, one new token each)
      -> bucket = the smallest capture size >= B             1, 2, 4, 8, ... max_batch_size
      -> ForwardBatch.build(rows), copied into the bucket's static batch:
           input_ids, positions, slot_mapping, seq_lens   [bucket]
           page_table                                     [bucket, max_pages]
         rows B .. bucket-1 are padding: token 0 at position 0, writing its K/V into the
         pool's scratch page (which the allocator never hands out) and attending to it alone
      -> replay the bucket's graph over those buffers     logits [bucket, vocab]
      -> logits[:B]

How a bucket's graph is made is the ``GraphCapture`` seam:

* ``InductorCapture`` (CPU, ``enable_torch_compile``): ``torch.compile`` of the model's forward
  over the static batch, with the inductor backend: each RMSNorm, rotary, residual add and SiLU
  becomes a fused C++ loop, the products stay MKL calls, and with ``cpp_wrapper`` the whole
  step is one C++ function. Compiled on the bucket's first step (seconds; inductor caches the
  result on disk, so the next process pays less).
* ``CudaGraphCapture`` (CUDA unless ``disable_cuda_graph``): records the forward's kernel
  launches once into a ``torch.cuda.CUDAGraph`` and replays them; the launch list needs no host
  code at all, so the attention backend plans its launch on the static batch at capture.

Rows that are not plain decodes (prompts, speculative verify rows, LoRA, hidden states for an
EAGLE head, research wrappers around the attention backend) run eagerly, as before. Greedy
output is the same either way: ``tests/models/test_decode_graph.py`` checks it against
transformers and against the eager engine.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.kernels.attention import AttentionBackend
from vibe_sgl_lite.kernels.backend import AttentionMetadata
from vibe_sgl_lite.memory.kv_pool import KVPool

logger = logging.getLogger(__name__)

Replay = Callable[[], torch.Tensor]
"""A captured step: runs the model over the bucket's static batch, returns its logits."""


def capture_sizes(max_batch_size: int) -> list[int]:
    """The buckets: powers of two below ``max_batch_size``, then ``max_batch_size`` itself.

    Few buckets keep the one-time capture cost low; a batch pads at most to twice its size,
    which at the small batches this is for costs little next to the overhead it removes.
    """
    sizes = [1]
    while sizes[-1] * 2 < max_batch_size:
        sizes.append(sizes[-1] * 2)
    return sizes if sizes[-1] == max_batch_size else [*sizes, max_batch_size]


class GraphCapture(Protocol):
    """How a bucket's step becomes a replayable graph (the seam between CPU and CUDA)."""

    name: str

    def capture(self, step: Replay) -> Replay:
        """Turn ``step`` (the eager forward over the bucket's static batch) into its replay."""
        ...


class InductorCapture:
    """``torch.compile`` with inductor: fused C++ loops between the products, no Python.

    ``fullgraph=True``: a graph break would bring the interpreter back, so it is an error here
    (the attention ops are registered custom ops with fake implementations, so nothing breaks).
    ``dynamic=False``: each bucket has its own static shapes. ``cpp_wrapper``: the step is one
    C++ function rather than a Python one calling kernels.
    """

    name = "torch.compile (inductor)"

    def __init__(self, cpp_wrapper: bool = True) -> None:
        self.options: dict[str, Any] = {"cpp_wrapper": cpp_wrapper}
        # A compiled function is cached per code object; every bucket of every model in this
        # process compiles the same one (``DecodeGraphRunner._step``), so lift dynamo's limit of
        # 8 entries, as SGLang does, or later buckets would silently fall back to eager.
        import torch._dynamo

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 1024)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 1024
        )

    def capture(self, step: Replay) -> Replay:
        compiled: Replay = torch.compile(step, fullgraph=True, dynamic=False, options=self.options)
        compiled()  # compile now, inside the capture, not in the caller's first timed step
        return compiled


class CudaGraphCapture:
    """Record the step's kernel launches into a CUDA graph; a replay launches them again.

    Warm-up runs on a side stream first (lazy initialisation, autotuning and allocator growth
    must not happen inside the capture). The graph reads and writes fixed addresses: the static
    batch, the KV pool, the weights, and whatever the attention backend planned at capture (its
    split-KV scratch), which ``DecodeGraphRunner`` keeps referenced while the graph lives.
    ``inner`` (``InductorCapture`` with ``enable_torch_compile``) compiles first.
    """

    name = "CUDA graph"

    def __init__(self, inner: GraphCapture | None = None) -> None:
        self.inner = inner
        self.pool: Any = None  # one memory pool shared by every bucket's graph

    def capture(self, step: Replay) -> Replay:
        if self.inner is not None:
            step = self.inner.capture(step)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            logits = step()
        self.pool = graph.pool()

        def replay() -> torch.Tensor:
            graph.replay()
            return logits.clone()  # the next replay overwrites the static output

        return replay


@dataclass
class Bucket:
    """One capture size: its static batch, the attention metadata over it, its replay.

    ``per_row [4, size]`` holds the batch's ``input_ids``, ``positions``, ``slot_mapping`` and
    ``seq_lens`` as its four rows (the batch's tensors are views of them), so that a step
    refills all four with one copy.
    """

    batch: ForwardBatch
    per_row: torch.Tensor
    metadata: AttentionMetadata
    replay: Replay | None = None
    held: dict[str, Any] | None = None  # the backend's state at capture (a graph's buffers)


class DecodeGraphRunner:
    """Runs decode steps of up to ``max_batch_size`` rows through captured graphs.

    ``scratch_page`` is a page of ``kv_pool`` that no request ever holds (``ModelWorker`` makes
    the pool one page larger than the allocator's): padding rows write and read only there.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kv_pool: KVPool,
        attention: AttentionBackend,
        capture: GraphCapture,
        max_batch_size: int,
        scratch_page: int,
    ) -> None:
        self.model, self.kv_pool, self.attention = model, kv_pool, attention
        self.capture_method = capture
        self.sizes = capture_sizes(max_batch_size)
        self.scratch_page = scratch_page
        self.buckets: dict[int, Bucket] = {}
        self.capture_seconds: dict[int, float] = {}
        """Seconds each bucket's capture took (compilation included), for the benchmarks."""
        self.failure: str | None = None
        """Why capturing failed (then every step runs eagerly): e.g. no C++ compiler for
        inductor, or a model whose forward cannot be one graph (a mixture of experts routes
        tokens with data-dependent shapes)."""

    @property
    def max_batch_size(self) -> int:
        return self.sizes[-1]

    def can_run(self, rows: Sequence[BatchRow], attention: AttentionBackend) -> bool:
        """Plain decode rows only, at most ``max_batch_size``, through the backend captured."""
        return (
            self.failure is None
            and attention is self.attention
            and len(rows) <= self.max_batch_size
            and all(
                len(r.token_ids) == 1
                and r.sample
                and r.num_logits == 1
                and not r.all_logits
                and r.lora is None
                for r in rows
            )
        )

    def forward(self, rows: Sequence[BatchRow]) -> torch.Tensor | None:
        """Logits ``[len(rows), vocab]`` of one decode step, from the bucket's replay; ``None``
        if the bucket could not be captured (``failure`` says why; the caller runs eagerly)."""
        num_rows = len(rows)
        size = next(s for s in self.sizes if s >= num_rows)
        bucket = self.buckets.get(size) or self._new_bucket(size)
        self._fill(bucket, rows)
        self.attention.metadata = bucket.metadata  # type: ignore[attr-defined]
        if bucket.replay is None:
            start = time.perf_counter()
            try:
                bucket.replay = self.capture_method.capture(self._step(bucket))
            except Exception as exc:  # noqa: BLE001 - any failure means: run this model eagerly
                self.failure = f"{type(exc).__name__}: {exc}".splitlines()[0]
                logger.warning(
                    "decode graphs off, every step runs eagerly: %s could not capture the "
                    "step (%s)",
                    self.capture_method.name,
                    self.failure,
                )
                return None
            self.capture_seconds[size] = time.perf_counter() - start
            bucket.held = dict(vars(self.attention))
            logger.info(
                "decode graph for batch size %d: %s in %.1f s",
                size,
                self.capture_method.name,
                self.capture_seconds[size],
            )
        return bucket.replay()[:num_rows]

    @property
    def device(self) -> torch.device:
        return self.kv_pool.k[0].device

    def _step(self, bucket: Bucket) -> Replay:
        model, kv_pool, attention, batch = self.model, self.kv_pool, self.attention, bucket.batch

        def step() -> torch.Tensor:
            logits: torch.Tensor = model(batch, kv_pool, attention)
            return logits

        return step

    def _new_bucket(self, size: int) -> Bucket:
        """A static batch of ``size`` padding rows; ``_fill`` overwrites the real ones."""
        rows = [
            BatchRow(token_ids=[0], start_pos=0, page_table=[self.scratch_page], sample=True)
            for _ in range(size)
        ]
        batch = ForwardBatch.build(rows, self.kv_pool.page_size, self.device)
        per_row = torch.stack(
            [batch.input_ids, batch.positions, batch.slot_mapping, batch.seq_lens]
        )
        batch.input_ids, batch.positions, batch.slot_mapping, batch.seq_lens = per_row.unbind(0)
        batch.page_table = torch.zeros(
            size, self.kv_pool.num_pages, dtype=torch.int64, device=self.device
        )
        batch.page_table[:, 0] = self.scratch_page
        batch.request_ids = []  # a replay serves whichever requests fill it
        batch.adapters = []
        self.attention.prepare(batch)
        metadata = self.attention.metadata  # type: ignore[attr-defined]
        assert isinstance(metadata, AttentionMetadata)
        bucket = self.buckets[size] = Bucket(batch, per_row, metadata)
        return bucket

    def _fill(self, bucket: Bucket, rows: Sequence[BatchRow]) -> None:
        """Write this step's rows into the static batch, and padding into the rows after them.

        Row ``r`` decodes its token at position ``p = r.start_pos``: it writes slot
        ``page_table[p // page_size] * page_size + p % page_size`` and then attends over
        ``p + 1`` keys. Padding is token 0 at position 0 in the scratch page's first slot.
        """
        page_size, size = self.kv_pool.page_size, bucket.per_row.shape[1]
        scratch_slot = self.scratch_page * page_size
        ids, positions, slots, lengths = [], [], [], []
        for row in rows:
            pos = row.start_pos
            ids.append(row.token_ids[0])
            positions.append(pos)
            slots.append(row.page_table[pos // page_size] * page_size + pos % page_size)
            lengths.append(pos + 1)
        pad = size - len(rows)
        per_row = [ids + [0] * pad, positions + [0] * pad, slots + [scratch_slot] * pad]
        bucket.per_row.copy_(torch.tensor([*per_row, lengths + [1] * pad]))
        width = max(len(row.page_table) for row in rows)
        table = [[*row.page_table, *[0] * (width - len(row.page_table))] for row in rows]
        static = bucket.batch.page_table
        static[: len(rows), :width].copy_(torch.tensor(table))
        static[len(rows) :, 0] = self.scratch_page


def graph_capture(config: EngineConfig, device: torch.device) -> tuple[GraphCapture, int] | None:
    """The capture method and largest bucket the settings ask for on ``device``, or ``None``.

    CPU: ``enable_torch_compile`` (up to ``torch_compile_max_bs`` rows). CUDA:
    ``enable_cuda_graph`` (up to ``cuda_graph_max_bs``), compiled first with
    ``enable_torch_compile``.
    """
    compile_ = InductorCapture() if config.enable_torch_compile else None
    if device.type == "cuda" and config.enable_cuda_graph:
        return CudaGraphCapture(compile_), config.cuda_graph_max_bs
    if compile_ is not None:
        return compile_, config.torch_compile_max_bs
    return None
