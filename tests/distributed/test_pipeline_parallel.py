"""Pipeline parallelism: the stage plan and micro-batch cut (properties, no processes), the cut
giving the same logits as the whole step (one process), and ``pp_size`` runs through
``ModelRunner`` giving ``pp_size=1``'s and transformers' greedy tokens (worker processes)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model_factory import build_qwen3, hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.distributed.pipeline_parallel import (
    StepTimes,
    bubble_share,
    split_microbatches,
    stage_layers,
    step_seconds,
)
from vibe_sgl_lite.kernels.attention import resolve_attention_backend
from vibe_sgl_lite.models.worker import ModelWorker, WorkerSpec

SYSTEM = list(range(10, 40))
PROMPTS = [SYSTEM + [100 + i, 200 + i, 7 + i] for i in range(4)] + [[300, 301, 302, 303, 304]]
MAX_NEW = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)

rows_strategy = st.lists(
    st.tuples(
        st.integers(1, 40), st.integers(0, 50), st.booleans(), st.booleans(), st.integers(1, 5)
    ),
    min_size=1,
    max_size=8,
)


def make_rows(specs: list[tuple[int, int, bool, bool, int]]) -> list[BatchRow]:
    """Rows from ``(tokens, start, sample, all_logits, num_logits)``; ``num_logits`` is capped
    at the row's tokens (a verify row of ``k + 1`` tokens asks for ``k + 1`` logits)."""
    rows = []
    for i, (n, start, sample, all_logits, k) in enumerate(specs):
        ids = [(7 * i + j) % 300 for j in range(n)]
        pages = list(range(100 * i, 100 * i + (start + n + 3) // 4))
        row = BatchRow(ids, start, pages, sample, all_logits, request_id=i, num_logits=min(k, n))
        rows.append(row)
    return rows


@pytest.mark.unit
@given(rows_strategy, st.integers(1, 6))
@settings(max_examples=200, deadline=None)
def test_microbatches_are_the_step_cut_in_order(
    specs: list[tuple[int, int, bool, bool, int]], parts: int
) -> None:
    """Pieces put back together are the rows; token counts differ by at most one; every logit
    the step returns (the last ``num_logits`` tokens of a sampled row, every token of an
    ``all_logits`` row) is returned once, in the same order."""
    rows = make_rows(specs)
    micro = split_microbatches(rows, parts)
    total = sum(len(r.token_ids) for r in rows)
    assert len(micro) == min(parts, total)
    sizes = [sum(len(r.token_ids) for r in m) for m in micro]
    assert max(sizes) - min(sizes) <= 1
    pieces = [piece for m in micro for piece in m]
    by_row: dict[int, list[BatchRow]] = {}
    for piece in pieces:
        by_row.setdefault(piece.request_id, []).append(piece)
    assert list(by_row) == [r.request_id for r in rows]  # rows stay in order
    for row in rows:
        parts_of_row = by_row[row.request_id]
        assert [t for p in parts_of_row for t in p.token_ids] == list(row.token_ids)
        starts = [p.start_pos for p in parts_of_row]
        lengths = [len(p.token_ids) for p in parts_of_row]
        assert starts == [row.start_pos + sum(lengths[:k]) for k in range(len(lengths))]
        assert parts_of_row[-1].sample == row.sample
        assert all(p.page_table == row.page_table for p in parts_of_row)

    def logit_positions(rs: list[BatchRow]) -> list[tuple[int, int]]:
        out = []
        for r in rs:
            if r.all_logits:
                out += [(r.request_id, r.start_pos + k) for k in range(len(r.token_ids))]
            elif r.sample:
                end = r.start_pos + len(r.token_ids)
                out += [(r.request_id, p) for p in range(end - r.num_logits, end)]
        return out

    assert [p for m in micro for p in logit_positions(m)] == logit_positions(rows)


@pytest.mark.unit
@given(st.integers(1, 64), st.integers(1, 64))
def test_stages_cover_every_layer_once_in_order(num_layers: int, pp_size: int) -> None:
    if pp_size > num_layers:
        with pytest.raises(ValueError, match="pp_size must be between 1 and"):
            stage_layers(num_layers, pp_size, 0)
        return
    stages = [stage_layers(num_layers, pp_size, s) for s in range(pp_size)]
    assert [i for r in stages for i in r] == list(range(num_layers))
    assert max(map(len, stages)) - min(map(len, stages)) <= 1


@pytest.mark.unit
def test_bubble_share_of_a_two_stage_pipeline() -> None:
    """Two micro-batches of 1 s over two stages: 3 s per step, 4 s busy of 6 -> 1/3 idle."""
    stage0 = [StepTimes(8, 8, ((t, t + 1), (t + 1, t + 2))) for t in (0.0, 10.0)]
    stage1 = [StepTimes(8, 8, ((t + 1, t + 2), (t + 2, t + 3))) for t in (0.0, 10.0)]
    assert bubble_share([stage0, stage1]) == pytest.approx(1 / 3)
    assert step_seconds([stage0[1], stage1[1]]) == pytest.approx(3.0)
    assert bubble_share([stage0]) == pytest.approx(0.0)
    with pytest.raises(ValueError, match="at least one recorded step"):
        bubble_share([[]])


@pytest.mark.unit
def test_microbatches_give_the_logits_of_the_whole_step(qwen3_dir: Path) -> None:
    """The cut is sound: a long prefill cut in two, then a step of a decode, a verify row (4
    logits, cut) and a scored row, run as micro-batches one after the other, give the logits
    of the uncut steps (float32)."""
    config = EngineConfig(max_total_tokens=256, page_size=4)
    backend = resolve_attention_backend("auto", torch.device("cpu"), "auto")
    whole = ModelWorker(WorkerSpec(qwen3_dir, config, 64, backend))
    cut = ModelWorker(WorkerSpec(qwen3_dir, config, 64, backend))
    prefill = [
        BatchRow(list(range(10, 41)), 0, list(range(8)), True),
        BatchRow([5, 6], 0, [8], True),
    ]
    step2 = [
        BatchRow([7], 31, list(range(8)), True),
        BatchRow(list(range(20, 26)), 0, [20, 21], True, num_logits=4),  # cut 5 | 1
        BatchRow(list(range(50, 61)), 2, [8, 9, 10, 11], False, all_logits=True),
    ]
    for rows in (prefill, step2):
        expected = whole.forward(rows)
        got = torch.cat([cut.forward(m) for m in split_microbatches(rows, 3)])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.unit
def test_bad_pp_size_is_refused_before_any_worker_starts(qwen3_dir: Path) -> None:
    with pytest.raises(ValueError, match="pp_size must be an integer >= 1"):
        EngineConfig(pp_size=0)
    with pytest.raises(ValueError, match=r"pp_size must be between 1 .* \(2\), got 3"):
        ModelRunner(qwen3_dir, pp_size=3, max_total_tokens=64)
    with pytest.raises(ValueError, match="pp_size = 1"):  # needs the model in this process
        ModelRunner(qwen3_dir, pp_size=2, attention_method="streaming", max_total_tokens=64)
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_child_worker(int(p))]


def _is_child_worker(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"vibe_sgl_lite.distributed.worker" in cmdline and int(stat.split()[3]) == os.getpid()


@pytest.mark.distributed
@pytest.mark.slow
def test_pp2_greedy_matches_one_process_with_hits_chunking_preemption_and_a_dead_stage(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """``pp_size=2`` on a 4-layer model gives ``pp_size=1``'s and transformers' greedy tokens
    with prefix-cache hits, chunked prefill (7 tokens over pages of 4) and preemption (a
    64-token pool) in one run; its stages record a timeline; then the last stage is killed and
    the next call raises as under TP, leaving no worker behind.

    One runner for all of it: starting the worker processes is most of the cost."""
    model_dir = build_qwen3(tmp_path / "qwen3", tokenizer_dir, num_hidden_layers=4)
    hf = load_hf(model_dir)
    reference = [hf_greedy(hf, p, MAX_NEW) for p in PROMPTS]
    settings_ = dict(page_size=4, max_total_tokens=64, chunked_prefill_size=7)
    outputs, stats = {}, {}
    for pp_size in (1, 2):
        runner = ModelRunner(model_dir, pp_size=pp_size, **settings_)  # type: ignore[arg-type]
        runner.generate_outputs(PROMPTS[0], GREEDY)  # warm the cache with the system prompt
        outputs[pp_size] = [o.token_ids for o in runner.generate_outputs(PROMPTS, GREEDY)]
        stats[pp_size] = runner.get_stats()
        if pp_size == 1:
            runner.close()
    assert outputs[2] == outputs[1] == reference
    assert stats[2]["num_preemptions"] > 0 and stats[2]["num_cached_tokens"] > 0
    executor = runner.engine.executor
    procs = executor.procs  # type: ignore[attr-defined]
    try:
        timeline = executor.take_timeline()  # type: ignore[attr-defined]
        assert len(timeline) == 2 and len(timeline[0]) == len(timeline[1]) > 0
        assert 0.0 < bubble_share(timeline) < 1.0
        os.kill(procs[1].pid, signal.SIGKILL)
        with pytest.raises(RuntimeError, match=r"worker rank 1 exited unexpectedly \(killed by"):
            runner.generate([5, 6, 7], max_tokens=4)
    finally:
        runner.close()
    assert not any(p.is_alive() for p in procs)


@pytest.mark.distributed
@pytest.mark.slow
def test_tp2_pp2_tied_uneven_stages_and_verify_rows_match_one_process(
    tmp_path: Path, tokenizer_dir: Path
) -> None:
    """Four ranks (two stages of two TP ranks) on a 3-layer model whose LM head is tied to the
    embedding: stage 0 holds layers 0-1 and the embedding, stage 1 layer 2, the norm and the
    (tied) LM head. Speculation (the target as its own draft, so every proposal is accepted)
    sends verify rows of ``k + 1`` logits through the pipeline, cut between micro-batches."""
    model_dir = build_qwen3(
        tmp_path / "tied", tokenizer_dir, num_hidden_layers=3, tie_word_embeddings=True
    )
    settings_ = dict(page_size=4, max_total_tokens=256, chunked_prefill_size=7)
    with ModelRunner(model_dir, **settings_) as one:  # type: ignore[arg-type]
        expected = [o.token_ids for o in one.generate_outputs(PROMPTS, GREEDY)]
    speculation = dict(speculative_algorithm="draft", speculative_draft_model_path=str(model_dir))
    with ModelRunner(
        model_dir, tp_size=2, pp_size=2, **settings_, **speculation  # type: ignore[arg-type]
    ) as runner:
        assert [o.token_ids for o in runner.generate_outputs(PROMPTS, GREEDY)] == expected
        assert runner.get_stats()["spec_acceptance_rate"] == 1.0
