"""Replaying a trace: arrivals in time order, routed to one or more simulated engines.

    for each arrival (time t, prompt, output length):
        every replica runs the steps that start before t      (EngineSim.advance_to)
        the router picks a replica; it queues the request     (round-robin or prefix-aware)
    every replica runs until its queue is empty               (EngineSim.drain)

One replica is one engine; ``replicas > 1`` models a data-parallel deployment, each replica its
own scheduler, prefix cache and KV pool, behind a router:

* ``round-robin``: replica ``i mod N``;
* ``prefix-aware``: the replica whose prefix cache matches most of the prompt (SGLang's
  cache-aware router, without its load threshold), the least loaded one when none matches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.scheduler import Scheduler
from vibe_sgl_lite.sim.cost import CostModel
from vibe_sgl_lite.sim.simulator import EngineSim, KVSample, RequestRecord
from vibe_sgl_lite.sim.trace import PromptBuilder, PromptSpec, TraceRequest

ROUTERS = ("round-robin", "prefix-aware")


@dataclass
class ReplayResult:
    """Every request's record, each replica's KV samples, and the run's totals."""

    records: list[RequestRecord]
    kv_samples: list[list[KVSample]]
    makespan: float  # virtual seconds from the first arrival to the last finish
    busy_seconds: list[float]  # per replica: virtual seconds spent in steps
    wall_seconds: float  # real seconds the simulation took
    num_preemptions: int
    num_steps: int
    extra: dict[str, float] = field(default_factory=dict)


def _pick_round_robin(sims: Sequence[EngineSim], prompt: list[int], index: int) -> EngineSim:
    return sims[index % len(sims)]


def _pick_prefix_aware(sims: Sequence[EngineSim], prompt: list[int], index: int) -> EngineSim:
    matched = [s.cache.match_prefix(prompt[:-1]).num_tokens for s in sims]
    best = max(matched)
    if best == 0:
        return min(sims, key=lambda s: s.load)
    return min((s for s, m in zip(sims, matched) if m == best), key=lambda s: s.load)


Router = Callable[[Sequence[EngineSim], list[int], int], EngineSim]
_ROUTERS: dict[str, Router] = {
    "round-robin": _pick_round_robin,
    "prefix-aware": _pick_prefix_aware,
}


def replay(
    trace: Sequence[TraceRequest],
    config: EngineConfig,
    cost: CostModel,
    prompts: PromptSpec = PromptSpec(),
    *,
    replicas: int = 1,
    router: str = "round-robin",
    make_scheduler: Callable[[], Scheduler] | None = None,
    evict_ahead: int = 0,
) -> ReplayResult:
    """Simulate ``trace`` on ``replicas`` engines of ``config``; ``make_scheduler`` builds each
    replica's scheduler (default: ``config.schedule_policy``), e.g. a research policy;
    ``evict_ahead``: see ``EngineSim``."""
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas!r}")
    if router not in _ROUTERS:
        raise ValueError(f"router must be one of {', '.join(ROUTERS)}, got {router!r}")
    pick = _ROUTERS[router]
    build = PromptBuilder(prompts)
    sims = [
        EngineSim(
            config,
            cost,
            scheduler=make_scheduler() if make_scheduler else None,
            evict_ahead=evict_ahead,
        )
        for _ in range(replicas)
    ]
    wall = time.perf_counter()
    for i, request in enumerate(trace):
        for sim in sims:
            sim.advance_to(request.arrival)
        prompt = build(i, request)
        pick(sims, prompt, i).add(i, prompt, request.output_len, request.arrival)
    for sim in sims:
        sim.drain()
    wall = time.perf_counter() - wall
    records = sorted((r for s in sims for r in s.records.values()), key=lambda r: r.request_id)
    finish = max((r.finish or 0.0) for r in records) if records else 0.0
    return ReplayResult(
        records=records,
        kv_samples=[s.kv_samples for s in sims],
        makespan=finish - (trace[0].arrival if trace else 0.0),
        busy_seconds=[s.busy_seconds for s in sims],
        wall_seconds=wall,
        num_preemptions=sum(s.scheduler.num_preemptions for s in sims),
        num_steps=sum(s.scheduler.num_forwards for s in sims),
    )
