"""Scheduler studies on the simulator (``docs/simulator.md``), each a short sweep.

    python benchmarks/sim_studies.py policies --plot docs/images/sim_policies.png
    python benchmarks/sim_studies.py chunk
    python benchmarks/sim_studies.py pool
    python benchmarks/sim_studies.py replicas

All use the first ``--limit`` requests of the Azure conversation trace, the *hand-written* (not
measured) H100 / Llama-3.1-8B cost profile, half of the prompts behind one of 8 shared 512-token
prefixes, and a deliberately small engine (``--pool`` KV tokens, ``--prefill`` tokens per step)
so that the knobs matter.
"""

from __future__ import annotations

import argparse

import common  # noqa: F401  (puts the repository root on sys.path)

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.sim import PromptSpec, load_cost, load_trace, replay, scale_trace, summarize
from vibe_sgl_lite.sim.report import Summary

TRACE = "benchmarks/data/azure_llm_inference_2023_conv.csv"
COST = "benchmarks/data/cost_h100_llama3_8b.json"
TTFT_SLO, TPOT_SLO = 1.0, 0.05


def run(args: argparse.Namespace, rate: float, replicas: int = 1, **config: object) -> Summary:
    settings: dict[str, object] = {
        "max_total_tokens": args.pool,
        "max_prefill_tokens": args.prefill,
        "schedule_policy": "fcfs",
    }
    settings.update(config)
    trace = scale_trace(load_trace(TRACE, args.limit), rate)
    result = replay(
        trace,
        EngineConfig(**settings),  # type: ignore[arg-type]
        load_cost(COST),
        PromptSpec(0.5),
        replicas=replicas,
        router="prefix-aware" if replicas > 1 else "round-robin",
        evict_ahead=256,
    )
    return summarize(result, TTFT_SLO, TPOT_SLO)


def row(label: str, s: Summary) -> str:
    return (
        f"{label:<22} TTFT p50 {s.ttft[50] * 1e3:8.1f} p99 {s.ttft[99] * 1e3:9.1f} ms  "
        f"TPOT p50 {s.tpot[50] * 1e3:5.1f} p99 {s.tpot[99] * 1e3:6.1f} ms  "
        f"preempt p99 {s.preemptions[99]:3.0f}  SLO {s.slo_attainment:6.1%}  "
        f"{s.output_tokens_per_s:7.0f} tok/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("study", choices=["policies", "chunk", "pool", "replicas"])
    parser.add_argument("--limit", type=int, default=1000)
    parser.add_argument("--pool", type=int, default=48 * 1024)
    parser.add_argument("--prefill", type=int, default=4096)
    parser.add_argument("--rates", default="1,2,3")
    parser.add_argument("--plot", default=None)
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    if args.study == "policies":
        series: dict[str, list[Summary]] = {}
        for policy in ("fcfs", "lpm", "dfs-weight", "priority"):
            series[policy] = [run(args, r, schedule_policy=policy) for r in rates]
            for r, s in zip(rates, series[policy]):
                print(row(f"{policy} x{r:g}", s))
        if args.plot:
            from vibe_sgl_lite.sim.plots import plot_sweep

            print(f"wrote {plot_sweep(rates, series, 'arrival rate (x trace)', args.plot)}")
    elif args.study == "chunk":
        for chunk in (None, 2048, 512, 256):
            print(
                row(
                    f"chunk {chunk} x{rates[-1]:g}",
                    run(args, rates[-1], chunked_prefill_size=chunk),
                )
            )
    elif args.study == "pool":
        for pool in (16 * 1024, 32 * 1024, 64 * 1024, 128 * 1024):
            print(
                row(
                    f"pool {pool // 1024}k x{rates[-1]:g}",
                    run(args, rates[-1], max_total_tokens=pool),
                )
            )
    else:
        for n in (1, 2, 3, 4):
            s = run(args, rates[-1], replicas=n)
            ok = s.ttft[99] <= TTFT_SLO and s.tpot[99] <= TPOT_SLO
            print(row(f"{n} replica(s) x{rates[-1]:g}", s) + ("  meets p99 SLO" if ok else ""))


if __name__ == "__main__":
    main()
