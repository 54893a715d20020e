"""Summaries of a replay: latency percentiles, throughput, SLO attainment, KV occupancy.

    TTFT   time to first token: arrival -> the step that samples the first token ends
    TPOT   time per output token after the first: (finish - first token) / (outputs - 1)
    queue  arrival -> the start of the first step that computes any of the request's tokens

A request meets the SLO when its TTFT <= ``ttft_slo`` and its TPOT <= ``tpot_slo`` (a one-token
output has no TPOT and meets that half). Percentiles are nearest-rank.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from vibe_sgl_lite.sim.replay import ReplayResult

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``nan`` for no values)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


@dataclass(frozen=True)
class Summary:
    """The numbers ``lines`` prints; ``ttft[q]`` is the q-th percentile in seconds."""

    num_requests: int
    ttft: dict[int, float]
    tpot: dict[int, float]
    queue: dict[int, float]
    preemptions: dict[int, float]
    output_tokens_per_s: float
    requests_per_s: float
    slo_attainment: float
    kv_used_mean: float
    kv_used_max: float
    busy_share: float
    cache_hit_rate: float


def summarize(result: ReplayResult, ttft_slo: float, tpot_slo: float) -> Summary:
    recs = result.records
    ttft = [r.ttft for r in recs]
    tpots = [t for r in recs if (t := r.tpot) is not None]
    ok = sum(r.ttft <= ttft_slo and (r.tpot is None or r.tpot <= tpot_slo) for r in recs)
    samples = [s.used for per_replica in result.kv_samples for s in per_replica]
    span = max(result.makespan, 1e-9)
    prompt_tokens = sum(r.prompt_len for r in recs)

    def pct(values: Sequence[float]) -> dict[int, float]:
        return {q: percentile(values, q) for q in PERCENTILES}

    return Summary(
        num_requests=len(recs),
        ttft=pct(ttft),
        tpot=pct(tpots),
        queue=pct([r.queue_time for r in recs]),
        preemptions=pct([float(r.preemptions) for r in recs]),
        output_tokens_per_s=sum(r.output_len for r in recs) / span,
        requests_per_s=len(recs) / span,
        slo_attainment=ok / max(1, len(recs)),
        kv_used_mean=sum(samples) / len(samples) if samples else 0.0,
        kv_used_max=max(samples, default=0.0),
        busy_share=sum(result.busy_seconds) / (span * max(1, len(result.busy_seconds))),
        cache_hit_rate=sum(r.cached_tokens for r in recs) / max(1, prompt_tokens),
    )


def _ms(values: dict[int, float]) -> str:
    return "  ".join(f"p{q} {v * 1e3:9.1f}" for q, v in values.items())


def lines(result: ReplayResult, summary: Summary, ttft_slo: float, tpot_slo: float) -> list[str]:
    """The report ``vibe-sgl-lite sim replay`` prints."""
    s = summary
    return [
        f"requests        {s.num_requests}  over {result.makespan:.1f} s simulated "
        f"({result.num_steps} steps, {result.wall_seconds:.1f} s wall)",
        f"TTFT ms         {_ms(s.ttft)}",
        f"TPOT ms         {_ms(s.tpot)}",
        f"queue ms        {_ms(s.queue)}",
        "preemptions     "
        + "  ".join(f"p{q} {v:9.0f}" for q, v in s.preemptions.items())
        + f"  total {result.num_preemptions}",
        f"throughput      {s.output_tokens_per_s:.1f} output tokens/s, "
        f"{s.requests_per_s:.2f} requests/s, engines busy {s.busy_share:.0%}",
        f"SLO attainment  {s.slo_attainment:.1%} (TTFT <= {ttft_slo:g} s, "
        f"TPOT <= {tpot_slo * 1e3:g} ms)",
        f"KV pool used    mean {s.kv_used_mean:.0%}, max {s.kv_used_max:.0%} (cached prefixes "
        f"included); prefix cache served {s.cache_hit_rate:.1%} of prompt tokens",
    ]


def kv_timeline(result: ReplayResult, width: int = 60) -> list[str]:
    """KV occupancy of replica 0 over time, one text line per bucket of time (``--kv-timeline``)."""
    samples = result.kv_samples[0] if result.kv_samples else []
    if not samples:
        return []
    per_line = max(1, math.ceil(len(samples) / 12))
    out = []
    for i in range(0, len(samples), per_line):
        chunk = samples[i : i + per_line]
        used = sum(s.used for s in chunk) / len(chunk)
        waiting = max(s.waiting for s in chunk)
        bar = "#" * round(used * width / 2)
        out.append(f"  t={chunk[0].time:8.0f}s  {used:4.0%} {bar:<{width // 2}} waiting<={waiting}")
    return out
