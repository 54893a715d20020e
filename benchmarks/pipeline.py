"""Pipeline parallelism: ``pp_size`` stages against one process, same cores, same requests.

Runs the same offline workload (``--num-prompts`` requests of random ids, lengths uniform in
``--prompt-range`` and ``--output-range``, greedy, EOS ignored) through ``ModelRunner`` with
``pp_size=1`` and ``pp_size=--pp-size`` (prompts prefilled ``--chunked-prefill-size`` tokens
per step, beside the running decodes), both given ``--threads`` threads in all (each stage
gets its share). It prints, per run: output tokens/s, all tokens/s (prompt + output), the
ratio, whether the greedy outputs are identical, and for the pipeline the **bubble share** of
its steps: the share of the stages' time inside steps spent waiting (``bubble_share`` of the
stages' own timelines of the last repeat: the fill and drain of the pipeline, and the stage-to-stage transfers),
next to the ideal ``(P - 1) / (M + P - 1)`` for ``M`` micro-batches over ``P`` stages. Steps are
split into prefill steps (some row has more than one token) and decode-only steps.

``--show-step`` draws one measured step of each kind as a timeline (the picture in
``docs/parallelism.md``): one line per rank, digits where it computes micro-batch ``m``, dots
where it waits.

    python benchmarks/pipeline.py                    # the bundled model, pp 2 vs 1
    python benchmarks/pipeline.py --threads 2 --show-step
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from contextlib import ExitStack

import common  # noqa: F401  (puts the checkout on sys.path)

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.bench.workload import make_workload
from vibe_sgl_lite.distributed.pipeline_parallel import StepTimes, bubble_share, step_seconds

Timelines = list[list[StepTimes]]


def measure(
    args: argparse.Namespace,
) -> tuple[dict[int, tuple[list[float], list[list[int]]]], Timelines]:
    """Both runners open at once, the workload timed on each in turn ``--repeat`` times (the
    machine's load drifts: alternating exposes both to the same drift); returns per
    ``pp_size`` the seconds of each repeat and the outputs, and the pipeline's timelines."""
    requests = make_workload(
        args.num_prompts, args.prompt_range, args.output_range, vocab=args.vocab, seed=0
    )
    params = [
        SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in requests
    ]
    results: dict[int, tuple[list[float], list[list[int]]]] = {}
    with ExitStack() as stack:
        runners = {
            pp: stack.enter_context(
                ModelRunner(
                    args.model,
                    pp_size=pp,
                    num_threads=args.threads,
                    max_total_tokens=args.max_total_tokens,
                    chunked_prefill_size=args.chunked_prefill_size,
                    max_prefill_tokens=args.chunked_prefill_size,
                    enable_prefix_cache=False,
                )
            )
            for pp in (1, args.pp_size)
        }
        warm = [r.prompt[:16] for r in requests[:4]]
        for runner in runners.values():
            runner.generate_outputs(warm, SamplingParams(temperature=0, max_tokens=4))
        for _ in range(args.repeat):
            for pp, runner in runners.items():
                take = getattr(runner.engine.executor, "take_timeline", None)
                if take is not None:
                    take()  # only this repeat's steps
                start = time.perf_counter()
                outputs = runner.generate_outputs([r.prompt for r in requests], params)
                seconds = time.perf_counter() - start
                results.setdefault(pp, ([], []))[0].append(seconds)
                results[pp][1][:] = [o.token_ids for o in outputs]
        timelines = runners[args.pp_size].engine.executor.take_timeline()  # type: ignore[attr-defined]
    return results, timelines


def steps_of_kind(timelines: Timelines, decode_only: bool) -> Timelines:
    """The timelines restricted to decode-only steps, or to steps that carry prompt tokens."""
    kinds = [step.is_decode_only for step in timelines[0]]
    return [[s for s, k in zip(steps, kinds) if k == decode_only] for steps in timelines]


def draw_step(timelines: Timelines, step: int, width: int = 64) -> str:
    """One step as text: a line per stage, micro-batch digits where it computes, dots idle."""
    records = [rank[step] for rank in timelines]
    t0 = min(s for r in records for s, _ in r.spans)
    seconds = step_seconds(records)
    lines = [f"  {records[0].tokens} tokens in {records[0].rows} rows, {1e3 * seconds:.1f} ms"]
    for rank, record in enumerate(records):
        cells = ["."] * width
        for m, (s, e) in enumerate(record.spans):
            first = int((s - t0) / seconds * width)
            last = max(first + 1, int((e - t0) / seconds * width))
            for c in range(first, min(last, width)):
                cells[c] = str(m % 10)
        lines.append(f"  stage {rank} |{''.join(cells)}|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    p.add_argument("--pp-size", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads in all, shared by the stages")
    p.add_argument("--num-prompts", type=int, default=16)
    p.add_argument("--prompt-range", type=int, nargs=2, default=(64, 256))
    p.add_argument("--output-range", type=int, nargs=2, default=(16, 64))
    p.add_argument("--vocab", type=int, default=256, help="prompt ids drawn from [1, vocab)")
    p.add_argument("--max-total-tokens", type=int, default=16384)
    p.add_argument("--chunked-prefill-size", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="timed runs of each, alternating")
    p.add_argument("--show-step", action="store_true", help="draw one step of each kind")
    args = p.parse_args(argv)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; threads {args.threads} in all")

    results, timelines = measure(args)
    prompt_tokens = sum(
        len(r.prompt)
        for r in make_workload(
            args.num_prompts, args.prompt_range, args.output_range, vocab=args.vocab, seed=0
        )
    )
    for pp, (times, outputs) in results.items():
        seconds = statistics.median(times)
        generated = sum(map(len, outputs))
        print(
            f"pp_size={pp}: median {seconds:.2f} s of {len(times)} "
            f"({' '.join(f'{t:.2f}' for t in times)}), {generated / seconds:.1f} output tokens/s, "
            f"{(generated + prompt_tokens) / seconds:.1f} tokens/s "
            f"({args.num_prompts} requests, {prompt_tokens} prompt + {generated} output tokens)"
        )
    (base_times, base_out), (pp_times, pp_out) = results[1], results[args.pp_size]
    ratio = statistics.median(base_times) / statistics.median(pp_times)
    print(f"pp_size={args.pp_size} / pp_size=1 tokens/s: {ratio:.2f}x")
    same = sum(a == b for a, b in zip(base_out, pp_out))
    print(f"greedy outputs identical: {same}/{len(base_out)}")

    stages = len(timelines)
    ideal = (stages - 1) / (args.pp_size + stages - 1)
    print(
        f"bubble share of a step, all {len(timelines[0])} steps: {bubble_share(timelines):.1%} "
        f"(ideal for {args.pp_size} micro-batches over {stages} stages: {ideal:.1%})"
    )
    for name, decode_only in (("prompt-carrying", False), ("decode-only", True)):
        kind = steps_of_kind(timelines, decode_only)
        if not kind[0]:
            continue
        durations = [step_seconds([rank[j] for rank in kind]) for j in range(len(kind[0]))]
        print(
            f"  {name} steps: {len(kind[0])}, bubble share {bubble_share(kind):.1%}, "
            f"median step {1e3 * statistics.median(durations):.1f} ms"
        )
        if args.show_step:
            longest = max(range(len(durations)), key=durations.__getitem__)
            middle = sorted(range(len(durations)), key=durations.__getitem__)[len(durations) // 2]
            print(draw_step(kind, longest if not decode_only else middle))


if __name__ == "__main__":
    main()
