"""The simulator makes the engine's decisions; its invariants hold over random traces."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.scheduler import ScheduledBatch
from vibe_sgl_lite.sim import CostModel, EngineSim, PromptBuilder, PromptSpec, TraceRequest, replay
from vibe_sgl_lite.sim.cost import FEATURES

COST = CostModel(coefficients={f: 1e-3 for f in FEATURES})

# (step at which it arrives, prompt length, output length); prompts share prefixes below.
ARRIVALS = [(0, 40, 6), (0, 70, 12), (1, 90, 4), (3, 40, 9), (3, 120, 7), (6, 33, 15), (9, 80, 5)]


def _prompts() -> list[list[int]]:
    rng = random.Random(1)
    shared = [rng.randrange(1, 4000) for _ in range(64)]
    return [
        (shared[: n // 2] if i % 2 else []) + [rng.randrange(1, 4000) for _ in range(n - n // 2)]
        for i, (_, n, _) in enumerate(ARRIVALS)
    ]


def _engine_decisions(config: EngineConfig) -> list[list[tuple[int, int]]]:
    engine = Engine(default_model_path(), config)
    log: list[list[tuple[int, int]]] = []
    schedule = engine.scheduler.schedule

    def logged() -> ScheduledBatch:
        batch = schedule()
        log.append([(r.request_id, n) for r, n in zip(batch.requests, batch.num_new_tokens)])
        return batch

    engine.scheduler.schedule = logged  # type: ignore[method-assign]
    try:
        step = 0
        while step <= max(a[0] for a in ARRIVALS) or engine.has_unfinished():
            for (at, _, out), prompt in zip(ARRIVALS, _prompts()):
                if at == step:
                    engine.add_request(prompt, SamplingParams(max_tokens=out, ignore_eos=True))
            engine.step()
            step += 1
    finally:
        engine.close()
    return [batch for batch in log if batch]


def _sim_decisions(config: EngineConfig) -> list[list[tuple[int, int]]]:
    sim = EngineSim(config, COST, log_steps=True)
    step = 0
    while step <= max(a[0] for a in ARRIVALS) or sim.scheduler.has_unfinished():
        for i, ((at, _, out), prompt) in enumerate(zip(ARRIVALS, _prompts())):
            if at == step:
                sim.add(i, prompt, out, sim.now)
        if sim.scheduler.has_unfinished():
            sim.step()
        step += 1
    assert sim.steps is not None
    return [log.batch for log in sim.steps]


@pytest.mark.parametrize(
    "policy, chunk, pool",
    [("fcfs", None, 4096), ("lpm", 32, 4096), ("dfs-weight", 48, 256), ("fcfs", 16, 192)],
)
def test_simulator_schedules_exactly_as_the_engine(
    policy: str, chunk: int | None, pool: int
) -> None:
    """Same arrivals at the same steps: the same (request, tokens) batches, step by step,
    including chunked prefill, prefix reuse and (with the small pools) preemption."""
    config = EngineConfig(
        max_total_tokens=pool,
        schedule_policy=policy,
        chunked_prefill_size=chunk,
        max_prefill_tokens=128,
        num_threads=1,
    )
    assert _sim_decisions(config) == _engine_decisions(config)


traces = st.lists(
    st.tuples(st.floats(0, 5, allow_nan=False), st.integers(1, 200), st.integers(1, 40)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=traces,
    policy=st.sampled_from(["fcfs", "lpm", "dfs-weight", "priority", "random"]),
    chunk=st.sampled_from([None, 16, 64]),
    share=st.sampled_from([0.0, 0.7]),
)
def test_every_request_finishes_and_no_page_leaks(
    rows: Sequence[tuple[float, int, int]], policy: str, chunk: int | None, share: float
) -> None:
    trace = [TraceRequest(t, p, o) for t, p, o in sorted(rows)]
    config = EngineConfig(
        max_total_tokens=512, page_size=16, schedule_policy=policy, chunked_prefill_size=chunk
    )
    sim = EngineSim(config, COST, evict_ahead=0)
    build_prompt = PromptBuilder(PromptSpec(share, num_prefixes=2, prefix_len=64, vocab_size=50))
    for i, r in enumerate(trace):
        sim.advance_to(r.arrival)
        sim.add(i, build_prompt(i, r), r.output_len, r.arrival)
        sim.check_invariants()
    while sim.scheduler.has_unfinished():
        sim.step()
        sim.check_invariants()
    assert all(rec.finish is not None for rec in sim.records.values())
    assert all(rec.finish >= rec.first_token >= rec.arrival for rec in sim.records.values())  # type: ignore[operator]
    sim.cache.flush()
    assert sim.allocator.num_free == sim.allocator.num_pages


def test_replay_routes_to_replicas_and_reports() -> None:
    trace = [TraceRequest(i * 0.01, 100, 10) for i in range(40)]
    config = EngineConfig(max_total_tokens=4096)
    for router in ("round-robin", "prefix-aware"):
        result = replay(trace, config, COST, PromptSpec(0.5), replicas=3, router=router)
        assert len(result.records) == 40 and all(r.finish for r in result.records)
        assert len(result.busy_seconds) == 3
