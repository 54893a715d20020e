"""``vibe-sgl-lite sim {calibrate,replay}``: the scheduler laboratory (``docs/simulator.md``).

The flags are declared here; the ``vibe_sgl_lite.sim`` package (and torch, for ``calibrate``)
is imported only when a command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from vibe_sgl_lite.config import EngineConfig


def add_sim_flags(
    sim: argparse.ArgumentParser, make: Callable[..., argparse.ArgumentParser]
) -> None:
    """``sim calibrate`` and ``sim replay`` under ``sim``; ``make(sub, name, help)`` builds one."""
    sub = sim.add_subparsers(dest="sim_command", required=True)
    cal = make(sub, "calibrate", "time real engine steps on this machine, fit the cost model")
    cal.add_argument(
        "--model",
        dest="model_path",
        default="default",
        help="model folder or " ".gguf ('default': the bundled tiny-shakespeare)",
    )
    cal.add_argument("--out", required=True, help="cost model JSON to write")
    cal.add_argument("--max-total-tokens", type=int, default=32 * 1024, help="KV pool in tokens")
    cal.add_argument("--device", default="cpu", help="torch device")
    cal.add_argument("--dtype", default="float32", help="model dtype")
    cal.add_argument("--repeats", type=int, default=2, help="passes over the grid")

    rep = make(sub, "replay", "replay a trace through the engine's scheduler on a virtual clock")
    rep.add_argument(
        "--trace",
        required=True,
        help="trace CSV (TIMESTAMP,ContextTokens,"
        "GeneratedTokens), e.g. benchmarks/data/azure_llm_inference_2023_conv.csv",
    )
    rep.add_argument("--cost", required=True, help="cost model JSON (sim calibrate, or a profile)")
    rep.add_argument(
        "--policy",
        default="fcfs",
        help="schedule policy (fcfs, lpm, dfs-weight, " "priority, random)",
    )
    rep.add_argument("--rate-scale", type=float, default=1.0, help="arrival rate multiplier")
    rep.add_argument("--length-scale", type=float, default=1.0, help="prompt/output multiplier")
    rep.add_argument("--limit", type=int, default=None, help="first N requests only")
    rep.add_argument(
        "--prefix-share",
        type=float,
        default=0.0,
        help="share of requests starting with one of --num-prefixes shared prefixes",
    )
    rep.add_argument("--num-prefixes", type=int, default=8, help="distinct shared prefixes")
    rep.add_argument("--prefix-len", type=int, default=512, help="tokens per shared prefix")
    rep.add_argument(
        "--max-total-tokens",
        type=int,
        default=None,
        help="KV pool in tokens per replica (default: the cost file's)",
    )
    rep.add_argument("--page-size", type=int, default=16, help="tokens per KV page")
    rep.add_argument("--max-running-requests", type=int, default=256, help="running slots")
    rep.add_argument("--max-prefill-tokens", type=int, default=8192, help="prefill per step")
    rep.add_argument("--chunked-prefill-size", type=int, default=None, help="prefill chunk")
    rep.add_argument("--no-prefix-cache", action="store_true", help="disable the radix cache")
    rep.add_argument("--replicas", type=int, default=1, help="simulated engines")
    rep.add_argument("--router", default="round-robin", help="round-robin or prefix-aware")
    rep.add_argument(
        "--evict-ahead",
        type=int,
        default=256,
        help="evict this many pages at once when the pool runs low (0: exact)",
    )
    rep.add_argument("--ttft-slo", type=float, default=2.0, help="TTFT target, seconds")
    rep.add_argument("--tpot-slo", type=float, default=0.1, help="TPOT target, seconds")
    rep.add_argument("--kv-timeline", action="store_true", help="print KV occupancy over time")
    rep.add_argument("--plot", default=None, help="folder for matplotlib plots")


def run_sim(args: argparse.Namespace) -> int:
    if args.sim_command == "calibrate":
        return _calibrate(args)
    return _replay(args)


def _calibrate(args: argparse.Namespace) -> int:
    from vibe_sgl_lite.core.runner import default_model_path
    from vibe_sgl_lite.sim.calibrate import CalibrationGrid, calibrate, fit_lines

    if args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    path = default_model_path() if args.model_path == "default" else args.model_path
    config = EngineConfig(
        max_total_tokens=args.max_total_tokens, device=args.device, dtype=args.dtype
    )
    model = calibrate(path, config, CalibrationGrid(repeats=args.repeats))
    for line in fit_lines(model):
        print(line)
    model.save(args.out)
    print(f"wrote {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from vibe_sgl_lite.sim import PromptSpec, load_cost, load_trace, replay, scale_trace
    from vibe_sgl_lite.sim.report import kv_timeline, lines, summarize

    if not args.rate_scale > 0:
        raise ValueError(f"--rate-scale must be > 0, got {args.rate_scale}")
    cost = load_cost(args.cost)
    pool = args.max_total_tokens or cost.kv_capacity_tokens
    if pool is None:
        raise ValueError(f"{args.cost}: no kv_capacity_tokens; give --max-total-tokens")
    config = EngineConfig(
        max_total_tokens=pool,
        page_size=args.page_size,
        max_running_requests=args.max_running_requests,
        max_prefill_tokens=args.max_prefill_tokens,
        chunked_prefill_size=args.chunked_prefill_size,
        schedule_policy=args.policy,
        enable_prefix_cache=not args.no_prefix_cache,
    )
    trace = scale_trace(load_trace(args.trace, args.limit), args.rate_scale, args.length_scale)
    spec = PromptSpec(args.prefix_share, args.num_prefixes, args.prefix_len)
    result = replay(
        trace,
        config,
        cost,
        spec,
        replicas=args.replicas,
        router=args.router,
        evict_ahead=args.evict_ahead,
    )
    summary = summarize(result, args.ttft_slo, args.tpot_slo)
    for line in lines(result, summary, args.ttft_slo, args.tpot_slo):
        print(line)
    if args.kv_timeline:
        print("KV pool over time (replica 0):")
        for line in kv_timeline(result):
            print(line)
    if args.plot:
        from vibe_sgl_lite.sim.plots import plot_replay

        for path in plot_replay(result, args.plot):
            print(f"wrote {path}")
    return 0
