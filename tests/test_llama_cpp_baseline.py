"""``LlamaCppEngine``'s continuous batching, against a stand-in for ``llama_cpp``'s C API.

llama-cpp-python is an optional benchmark extra, absent in CI, but the batching loop that drives
it (slots, prompt chunks within ``n_batch``, one logits row per sequence, freeing a finished
sequence's cache) is this project's code. The stand-in keeps each sequence's cache as a token
list, refuses what llama.cpp refuses (a position that does not follow the sequence's last one,
more tokens than ``n_batch``, a sequence id beyond ``n_seq_max``), and "predicts" a token that
depends on the sequence's whole context, so a token fed to the wrong sequence or position
changes every later output. Each request's reference continuation is computed alone.
"""

from __future__ import annotations

import ctypes
import random
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.bench.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.unit

VOCAB = 97


def next_token(context: list[int]) -> int:
    return (sum((i + 1) * t for i, t in enumerate(context)) * 31 + len(context)) % VOCAB


class FakeLlamaCpp(types.SimpleNamespace):
    """The few C entry points ``LlamaCppEngine`` calls, over a model that is ``next_token``."""

    GGML_TYPE_F32, GGML_TYPE_F16 = 0, 1

    def __init__(self) -> None:
        super().__init__()
        self.cache: dict[int, list[int]] = {}
        self.rows: list[Any] = []
        self.largest_batch = 0
        self.most_sequences = 0

    def llama_backend_init(self) -> None: ...
    def llama_log_callback(self, fn: Any) -> Any:
        return fn

    def llama_log_set(self, callback: Any, data: Any) -> None: ...
    def llama_model_default_params(self) -> Any:
        return types.SimpleNamespace()

    def llama_model_load_from_file(self, path: bytes, params: Any) -> Any:
        return object()

    def llama_context_default_params(self) -> Any:
        return types.SimpleNamespace()

    def llama_init_from_model(self, model: Any, params: Any) -> Any:
        self.params = params
        return object()

    def llama_model_get_vocab(self, model: Any) -> Any:
        return object()

    def llama_vocab_n_tokens(self, vocab: Any) -> int:
        return VOCAB

    def llama_batch_init(self, n: int, embd: int, n_seq: int) -> Any:
        return types.SimpleNamespace(
            n_tokens=0,
            token=[0] * n,
            pos=[0] * n,
            n_seq_id=[0] * n,
            seq_id=[[0] for _ in range(n)],
            logits=[False] * n,
        )

    def llama_batch_free(self, batch: Any) -> None: ...
    def llama_free(self, ctx: Any) -> None: ...
    def llama_model_free(self, model: Any) -> None: ...
    def llama_get_memory(self, ctx: Any) -> Any:
        return object()

    def llama_memory_clear(self, memory: Any, data: bool) -> None:
        self.cache.clear()

    def llama_memory_seq_rm(self, memory: Any, seq: int, p0: int, p1: int) -> bool:
        assert (p0, p1) == (-1, -1)
        self.cache.pop(seq, None)
        return True

    def llama_decode(self, ctx: Any, batch: Any) -> int:
        if not 0 < batch.n_tokens <= self.params.n_batch:
            return -1
        self.rows = []
        for i in range(batch.n_tokens):
            seq = batch.seq_id[i][0]
            if not 0 <= seq < self.params.n_seq_max or batch.n_seq_id[i] != 1:
                return -1
            context = self.cache.setdefault(seq, [])
            if batch.pos[i] != len(context):
                return -1
            context.append(batch.token[i])
            if batch.logits[i]:
                row = (ctypes.c_float * VOCAB)()
                row[next_token(context)] = 1.0
                self.rows.append((i, row))
        if sum(map(len, self.cache.values())) > self.params.n_ctx:
            return 1  # no room in the KV cache
        self.largest_batch = max(self.largest_batch, batch.n_tokens)
        self.most_sequences = max(self.most_sequences, len(self.cache))
        return 0

    def llama_get_logits_ith(self, ctx: Any, i: int) -> Any:
        row = dict(self.rows)[i]
        return ctypes.cast(row, ctypes.POINTER(ctypes.c_float))


def reference(prompt: list[int], max_tokens: int) -> list[int]:
    context, out = list(prompt), []
    for _ in range(max_tokens):
        out.append(next_token(context))
        context.append(out[-1])
    return out


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12)), min_size=1, max_size=9),
    max_seqs=st.integers(1, 4),
    n_batch=st.integers(1, 24),
    seed=st.integers(0, 2**16),
)
def test_every_request_gets_its_own_greedy_continuation(
    lengths: list[tuple[int, int]], max_seqs: int, n_batch: int, seed: int
) -> None:
    fake = FakeLlamaCpp()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(sys.modules, "llama_cpp", fake)
        _generate_and_check(fake, lengths, max_seqs, n_batch, seed)


def _generate_and_check(
    fake: FakeLlamaCpp, lengths: list[tuple[int, int]], max_seqs: int, n_batch: int, seed: int
) -> None:
    rng = random.Random(seed)
    requests = [([rng.randrange(VOCAB) for _ in range(p)], n) for p, n in lengths]
    n_ctx = max_seqs * max(p + n for p, n in lengths)
    with LlamaCppEngine(
        Path("model.gguf"),
        max_seqs=max_seqs,
        n_ctx=n_ctx,
        threads=1,
        n_batch=n_batch,
    ) as engine:
        assert engine.generate(requests) == [reference(p, n) for p, n in requests]
        assert fake.cache == {}  # every finished sequence freed its cache
    assert fake.largest_batch <= n_batch and fake.most_sequences <= max_seqs


def test_decode_step_seconds_refuses_more_sequences_than_slots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "llama_cpp", FakeLlamaCpp())
    with LlamaCppEngine(Path("m.gguf"), max_seqs=2, n_ctx=64, threads=1) as engine:
        assert engine.decode_step_seconds(2, context=8, steps=2) >= 0
        with pytest.raises(ValueError, match=r"batch must be <= max_seqs \(2\), got 3"):
            engine.decode_step_seconds(3, context=8, steps=2)
