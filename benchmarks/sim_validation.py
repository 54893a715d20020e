"""Validate the simulator against the real engine on a slice of the Azure conversation trace.

1. Calibrate the cost model of the bundled model on this machine (``sim.calibrate``).
2. Replay the first ``--requests`` requests of the trace (lengths times ``--length-scale``, cut
   to the model's 1,024 positions, arrivals times ``1 / --rate-scale``) for real: a real-time
   driver adds each request to an ``Engine`` when its arrival time has passed and steps the
   engine whenever it has work (the same loop ``EngineLoop`` runs, without HTTP).
3. Replay the same slice, same token ids, same settings, in the simulator.
4. Print predicted and measured TTFT/TPOT p50/p90 and throughput side by side, with the error.

    python benchmarks/sim_validation.py
    python benchmarks/sim_validation.py --requests 80 --rate-scale 0.5 --policy lpm

Timings on a shared machine are noisy: the calibration and the real run should see the same
load, so run nothing else meanwhile.
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the repository root on sys.path)

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.sim import (
    PromptBuilder,
    PromptSpec,
    RequestRecord,
    load_trace,
    replay,
    scale_trace,
    summarize,
)
from vibe_sgl_lite.sim.calibrate import CalibrationGrid, calibrate, fit_lines
from vibe_sgl_lite.sim.replay import ReplayResult
from vibe_sgl_lite.sim.report import Summary
from vibe_sgl_lite.sim.trace import TraceRequest

TRACE = "benchmarks/data/azure_llm_inference_2023_conv.csv"


def run_real(trace: list[TraceRequest], spec: PromptSpec, config: EngineConfig) -> ReplayResult:
    """The engine in real time: requests join at their arrival, steps run back to back."""
    engine = Engine(default_model_path(), config)
    build = PromptBuilder(spec)
    reqs = []
    try:
        engine.add_request(build(10**6, TraceRequest(0, 32, 2)), SamplingParams(max_tokens=2))
        while engine.has_unfinished():  # warm-up, not measured
            engine.step()
        start = time.perf_counter()
        i = 0
        while i < len(trace) or engine.has_unfinished():
            now = time.perf_counter() - start
            while i < len(trace) and trace[i].arrival <= now:
                params = SamplingParams(max_tokens=trace[i].output_len, ignore_eos=True)
                req = engine.add_request(build(i, trace[i]), params)
                req.arrival_time = start + trace[i].arrival
                reqs.append(req)
                i += 1
            if engine.has_unfinished():
                engine.step()
            elif i < len(trace):
                time.sleep(max(0.0, trace[i].arrival - (time.perf_counter() - start)))
        records = []
        for j, req in enumerate(reqs):
            assert req.first_token_time is not None and req.finish_time is not None
            rec = RequestRecord(
                j, req.arrival_time - start, req.num_prompt_tokens, req.num_output_tokens
            )
            rec.first_scheduled = (req.first_scheduled_time or req.arrival_time) - start
            rec.first_token, rec.finish = req.first_token_time - start, req.finish_time - start
            records.append(rec)
        busy = engine.scheduler.num_forwards
    finally:
        engine.close()
    makespan = max(r.finish or 0.0 for r in records)
    return ReplayResult(records, [[]], makespan, [makespan], makespan, 0, busy)


def table(predicted: Summary, measured: Summary) -> list[str]:
    rows = [
        ("TTFT p50 (ms)", predicted.ttft[50] * 1e3, measured.ttft[50] * 1e3),
        ("TTFT p90 (ms)", predicted.ttft[90] * 1e3, measured.ttft[90] * 1e3),
        ("TPOT p50 (ms)", predicted.tpot[50] * 1e3, measured.tpot[50] * 1e3),
        ("TPOT p90 (ms)", predicted.tpot[90] * 1e3, measured.tpot[90] * 1e3),
        ("throughput (tok/s)", predicted.output_tokens_per_s, measured.output_tokens_per_s),
    ]
    out = [
        f"| {'metric':<20} | {'simulated':>10} | {'real engine':>11} | {'error':>7} |",
        f"| {'-' * 20} | {'-' * 10} | {'-' * 11} | {'-' * 7} |",
    ]
    for name, sim, real in rows:
        out.append(f"| {name:<20} | {sim:10.1f} | {real:11.1f} | {(sim - real) / real:+7.1%} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--rate-scale", type=float, default=0.5)
    parser.add_argument("--length-scale", type=float, default=0.25)
    parser.add_argument("--policy", default="fcfs")
    parser.add_argument("--prefix-share", type=float, default=0.3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (2 oversubscribe a shared 2-core machine)",
    )
    parser.add_argument("--repeats", type=int, default=1, help="calibration passes")
    args = parser.parse_args()
    config = EngineConfig(
        max_total_tokens=32 * 1024, schedule_policy=args.policy, num_threads=args.threads
    )
    trace = scale_trace(
        load_trace(TRACE, args.requests), args.rate_scale, args.length_scale, max_len=1000
    )
    spec = PromptSpec(args.prefix_share, num_prefixes=4, prefix_len=128)
    started = time.perf_counter()
    cost = calibrate(default_model_path(), config, CalibrationGrid(repeats=args.repeats))
    print(f"calibrated in {time.perf_counter() - started:.0f} s:")
    print("\n".join(fit_lines(cost)))
    measured = summarize(run_real(trace, spec, config), 1.0, 0.1)
    predicted = summarize(replay(trace, config, cost, spec), 1.0, 0.1)
    print(
        f"{len(trace)} requests of {TRACE}, rate x{args.rate_scale}, lengths "
        f"x{args.length_scale}, policy {args.policy}, prefix share {args.prefix_share}:"
    )
    print("\n".join(table(predicted, measured)))


if __name__ == "__main__":
    main()
