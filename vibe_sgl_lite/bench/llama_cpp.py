"""llama.cpp as a baseline: continuous batching over many sequences, greedy, through
``llama-cpp-python``'s low-level API; ``run_llama_cpp`` is its column of ``vibe-sgl-lite bench``.

``llama_cpp.Llama`` (the high-level class) decodes one sequence at a time, which is not how a
llama.cpp user serves many requests: ``llama-server`` keeps several sequences ("slots") in one
context and decodes all of them in each ``llama_decode``. ``LlamaCppEngine`` does the same in a
few dozen lines, so that the benchmarks compare batch against batch:

    every step, one llama_batch of at most n_batch tokens:
      [ last token of every decoding sequence | prompt chunk of the next waiting sequences ]
        -> llama_decode(ctx, batch)                       one forward over all of them
        -> argmax of each sequence's logits row           greedy, its next token
      a sequence that has its max_tokens frees its slot:  llama_memory_seq_rm(mem, seq, -1, -1)

The KV cache is unified (``kv_unified``): sequences share one pool of ``n_ctx`` cells, as this
engine's paged pool is shared. ``kv_dtype`` picks its type: float32 for a like-for-like run
against this engine's float32 cache, or llama.cpp's default float16. ``extra_buffers=False``
loads the weights without llama.cpp's repacked and AMX buffers (its plain CPU kernels): on a
virtual machine that advertises AMX without enabling it, the AMX kernels of quantised types die
with SIGILL. Needs the optional ``llama-cpp-python`` package (the ``llama-cpp`` extra), imported
on construction.

The column runs on ``--gguf FILE``, ``--model FILE.gguf``, or else the model folder written to a
temporary GGUF in the run's dtype (``models/gguf_export.py``; F32 for float32, so all engines
multiply the same numbers).
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vibe_sgl_lite.bench.report import Column
from vibe_sgl_lite.bench.shapes import is_gguf
from vibe_sgl_lite.bench.workload import BenchRequest

if TYPE_CHECKING:
    from vibe_sgl_lite.config import EngineConfig

NOT_INSTALLED = "not installed (pip install -e '.[llama-cpp]')"
"""What a benchmark prints in place of llama.cpp's figures when the package is missing."""

_LOG_CALLBACK: Any = None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def silence_llama_cpp_logs(llama_cpp: Any) -> None:
    """llama.cpp logs every tensor it loads to stderr; a benchmark prints its own lines."""
    global _LOG_CALLBACK
    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = llama_cpp.llama_log_callback(lambda level, text, data: None)
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))


@dataclass
class _Sequence:
    prompt: list[int]
    max_tokens: int
    index: int
    slot: int = -1
    prefilled: int = 0
    output: list[int] = field(default_factory=list)


class LlamaCppEngine:
    """One llama.cpp model and context; ``generate`` runs a list of greedy requests."""

    def __init__(
        self,
        gguf: Path,
        *,
        max_seqs: int,
        n_ctx: int,
        threads: int,
        n_batch: int = 2048,
        kv_dtype: str = "float32",
        extra_buffers: bool = True,
    ) -> None:
        import llama_cpp

        self.lib = llama_cpp
        silence_llama_cpp_logs(llama_cpp)
        types = {"float32": llama_cpp.GGML_TYPE_F32, "float16": llama_cpp.GGML_TYPE_F16}
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.use_extra_bufts = extra_buffers
        self.model = llama_cpp.llama_model_load_from_file(str(gguf).encode(), model_params)
        if not self.model:
            raise ValueError(f"llama.cpp could not load {gguf}")
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch  # n_ubatch stays llama.cpp's default (512), as a user runs it
        params.n_seq_max = max_seqs
        params.n_threads = params.n_threads_batch = threads
        params.type_k = params.type_v = types[kv_dtype]
        params.kv_unified = True
        params.no_perf = True
        self.ctx = llama_cpp.llama_init_from_model(self.model, params)
        if not self.ctx:
            raise ValueError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.n_batch, self.max_seqs = n_batch, max_seqs
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, 1)

    def close(self) -> None:
        self.lib.llama_batch_free(self.batch)
        self.lib.llama_free(self.ctx)
        self.lib.llama_model_free(self.model)

    def __enter__(self) -> LlamaCppEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _decode(self, entries: Sequence[tuple[int, int, int, bool]]) -> None:
        """One ``llama_decode`` of ``(token, position, sequence, wants_logits)`` entries."""
        batch = self.batch
        for i, (token, pos, seq, logits) in enumerate(entries):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(entries)
        status = self.lib.llama_decode(self.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status} (KV cache full?)")

    def _argmax(self, i: int) -> int:
        row = self.lib.llama_get_logits_ith(self.ctx, i)
        logits = np.ctypeslib.as_array(
            ctypes.cast(row, ctypes.POINTER(ctypes.c_float)), (self.n_vocab,)
        )
        return int(logits.argmax())

    def generate(self, requests: Sequence[tuple[Sequence[int], int]]) -> list[list[int]]:
        """Greedy continuations of ``(prompt ids, max_tokens)`` requests, admitted in order as
        slots free up (EOS ignored: each request takes exactly its ``max_tokens``)."""
        memory = self.lib.llama_get_memory(self.ctx)
        self.lib.llama_memory_clear(memory, True)
        waiting = deque(_Sequence(list(p), n, i) for i, (p, n) in enumerate(requests))
        running: list[_Sequence] = []
        free_slots = list(range(self.max_seqs))[::-1]
        done: list[_Sequence] = []
        while waiting or running:
            entries: list[tuple[int, int, int, bool]] = []
            owners: list[_Sequence] = []
            for seq in running:
                if seq.prefilled == len(seq.prompt):  # decoding: feed its last token
                    pos = len(seq.prompt) + len(seq.output) - 1
                    entries.append((seq.output[-1], pos, seq.slot, True))
                    owners.append(seq)
            while waiting and free_slots:
                seq = waiting.popleft()
                seq.slot = free_slots.pop()
                running.append(seq)
            for seq in running:  # prompt chunks, in arrival order, up to n_batch tokens
                room = self.n_batch - len(entries)
                if seq.prefilled == len(seq.prompt) or room <= 0:
                    continue
                end = min(len(seq.prompt), seq.prefilled + room)
                for pos in range(seq.prefilled, end):
                    last = pos == len(seq.prompt) - 1
                    entries.append((seq.prompt[pos], pos, seq.slot, last))
                    if last:
                        owners.append(seq)
                seq.prefilled = end
            self._decode(entries)
            picked = [i for i, e in enumerate(entries) if e[3]]
            for i, seq in zip(picked, owners):
                seq.output.append(self._argmax(i))
            for seq in [s for s in running if len(s.output) == s.max_tokens]:
                running.remove(seq)
                self.lib.llama_memory_seq_rm(memory, seq.slot, -1, -1)
                free_slots.append(seq.slot)
                done.append(seq)
        return [seq.output for seq in sorted(done, key=lambda s: s.index)]

    def decode_step_seconds(self, batch: int, context: int, steps: int, seed: int = 0) -> float:
        """Median seconds of one decode step of ``batch`` sequences after ``context`` random
        prompt tokens each (what ``benchmarks/decode_step.py`` times for this engine)."""
        if batch > self.max_seqs:
            raise ValueError(f"batch must be <= max_seqs ({self.max_seqs}), got {batch}")
        rng = np.random.default_rng(seed)
        memory = self.lib.llama_get_memory(self.ctx)
        self.lib.llama_memory_clear(memory, True)
        for seq in range(batch):
            prompt = rng.integers(1, self.n_vocab, context).tolist()
            for start in range(0, context, self.n_batch):
                chunk = prompt[start : start + self.n_batch]
                self._decode([(t, start + j, seq, False) for j, t in enumerate(chunk)])
        times = []
        tokens = rng.integers(1, self.n_vocab, batch).tolist()
        for step in range(steps + 1):
            t0 = time.perf_counter()
            self._decode([(tokens[s], context + step, s, True) for s in range(batch)])
            tokens = [self._argmax(i) for i in range(batch)]
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))


# ---- the benchmark's column ------------------------------------------------------------------


@contextmanager
def exported_gguf(model_path: Path, dtype: str, gguf: Path | None) -> Iterator[Path | None]:
    """``gguf``, or, when llama.cpp is installed and none was given, ``model_path`` (a folder)
    written to a temporary ``.gguf`` in ``dtype`` (F32 for float32: the same numbers llama.cpp
    and this engine multiply), so that llama.cpp runs on the same weights as the others."""
    if gguf is not None or not llama_cpp_installed() or is_gguf(model_path):
        yield gguf
        return
    from vibe_sgl_lite.models.gguf_export import export_gguf  # torch: only to export

    storage = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    with tempfile.TemporaryDirectory(prefix="vibe-sgl-lite-gguf-") as tmp:
        exported: Path | None
        try:
            exported = export_gguf(model_path, Path(tmp) / f"model.{storage.lower()}.gguf", storage)
        except (ValueError, ImportError) as exc:  # an architecture or tokenizer it cannot write
            print(f"llama.cpp: no GGUF ({exc})", file=sys.stderr)
            exported = None
        yield exported


def run_llama_cpp(
    gguf: Path | None, requests: list[BenchRequest], config: EngineConfig, threads: int
) -> Column:
    """llama.cpp on ``gguf``, continuously batched like ``llama-server`` (``LlamaCppEngine``:
    as many sequences at once as ours, ``--max-running-requests``), greedy, each request
    exactly its ``max_tokens``, on ``threads`` threads. Skipped without the package or a
    ``.gguf``."""
    column = Column("llama.cpp")
    if not llama_cpp_installed():
        column.skipped = NOT_INSTALLED
        return column
    if gguf is None:
        column.skipped = "skipped (needs a .gguf file: --gguf FILE or --model FILE.gguf)"
        return column
    try:
        max_seqs = min(len(requests), config.max_running_requests)
        lengths = sorted((len(r.prompt) + r.max_tokens for r in requests), reverse=True)
        kv_dtype = "float32" if config.dtype == "float32" else "float16"
        with LlamaCppEngine(
            gguf,
            max_seqs=max_seqs,
            n_ctx=sum(lengths[:max_seqs]),
            threads=threads,
            kv_dtype=kv_dtype,
        ) as llm:
            if max(max(r.prompt) for r in requests) >= llm.n_vocab:
                column.skipped = f"skipped (prompt ids exceed its vocabulary of {llm.n_vocab})"
                return column
            llm.generate([(requests[0].prompt[:8], 2)])  # warm-up
            t0 = time.perf_counter()
            column.outputs = llm.generate([(r.prompt, r.max_tokens) for r in requests])
            column.seconds = time.perf_counter() - t0
    except Exception as exc:  # a file it cannot read, an architecture it lacks: report
        column.skipped = f"skipped ({type(exc).__name__}: {exc})"
    return column
