"""Chunked prefill: how long do decoding requests stall when a long prompt arrives?

Builds a random-weight Qwen3 in a temporary folder. ``--num-decoders`` requests start decoding;
once each has produced a few tokens, one ``--prompt-len``-token prompt arrives. The script drives
``Engine.step()`` directly and, after every step, records ``time.perf_counter()`` for each decoding
request whose output grew. It does this twice, in the same run:

* ``chunked_prefill_size=None``: the whole prompt is prefilled in one step, and every decoding
  request waits for that step;
* ``chunked_prefill_size=--chunk`` (and ``max_prefill_tokens`` equal to it): the prompt is
  prefilled ``--chunk`` tokens per step, each step also carrying one decode token of every
  running request (a Sarathi-style mixed batch).

It prints the largest gap between two consecutive output tokens of the decoding requests (and
the step that ended it), the median gap, and the times of the steps that carried the long
prompt, so one can see that the largest stall is one step of a chunk's size, not the whole
prompt's prefill.

    python benchmarks/chunked_prefill.py                    # 16 decoders, 8192-token prompt
    python benchmarks/chunked_prefill.py --prompt-len 2048  # quicker
    python benchmarks/chunked_prefill.py --timeline         # which request ran in which step

``--timeline`` instead runs a tiny workload (two decoding requests, then a 30-token and a
10-token prompt, ``chunked_prefill_size=8``, ``max_prefill_tokens=12``) and prints what
``Scheduler.schedule()`` returned at every step (the table in
``docs/chunked_prefill_and_policies.md``).
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from common import add_common_args, apply_threads, random_qwen3


@dataclass
class Trace:
    """What one run recorded, from the long prompt's arrival on."""

    # One entry per step: (seconds, tokens of the long request in it, decoders in it).
    steps: list[tuple[float, int, int]] = field(default_factory=list)
    # Per decoding request: (time, index of the step that produced it), starting with
    # (arrival of the long prompt, -1), so the first gap includes the wait from then on.
    arrivals: list[list[tuple[float, int]]] = field(default_factory=list)
    ttft: float = 0.0  # the long prompt's time to first token

    def gaps(self) -> list[tuple[float, int]]:
        """(seconds, index of the step that ended the gap) for every pair of tokens."""
        return [(b - a, step) for ts in self.arrivals for (a, _), (b, step) in zip(ts, ts[1:])]

    def prompt_steps(self) -> list[float]:
        return [s for s, n, _ in self.steps if n > 1]

    def describe(self, step: int) -> str:
        seconds, n, decoders = self.steps[step]
        if n > 1:
            what = f"{n} prompt tokens + {decoders} decodes"
        elif n == 1:
            what = f"{decoders} decodes + 1 decode of the long request"
        else:
            what = f"{decoders} decodes"
        return f"step {step + 1} ({what}, {seconds:.3f} s)"


def run(model_dir: Path, args: argparse.Namespace, chunk: int | None) -> Trace:
    from vibe_sgl_lite import ModelRunner, SamplingParams
    from vibe_sgl_lite.scheduler import ScheduledBatch

    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, args.vocab, (args.num_decoders, args.decoder_prompt_len), generator=g)
    long_prompt = torch.randint(1, args.vocab, (args.prompt_len,), generator=g).tolist()
    # Decoders keep going well past the long prompt's prefill, however many chunks it takes.
    chunks = -(-args.prompt_len // chunk) if chunk else 1
    decode_params = SamplingParams(
        temperature=0, max_tokens=args.warmup_tokens + chunks + 8, ignore_eos=True
    )
    long_params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    pool = args.prompt_len + args.num_decoders * (args.decoder_prompt_len + chunks + 64) + 1024
    with ModelRunner(
        model_dir,
        dtype=args.dtype,
        page_size=args.page_size,
        max_total_tokens=pool,
        max_model_len=args.prompt_len + 64,
        chunked_prefill_size=chunk,
        max_prefill_tokens=chunk or args.prompt_len,
        enable_prefix_cache=False,
    ) as runner:
        engine = runner.engine
        assert engine is not None
        runner.generate_outputs([long_prompt[: chunk or 512]], long_params)  # warm-up

        scheduled: list[ScheduledBatch] = []
        schedule = engine.scheduler.schedule

        def recording_schedule() -> ScheduledBatch:
            batch = schedule()
            scheduled.append(batch)
            return batch

        engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]

        decoders = [engine.add_request(row.tolist(), decode_params) for row in short]
        while min(r.num_output_tokens for r in decoders) < args.warmup_tokens:
            engine.step()
        seen = [r.num_output_tokens for r in decoders]
        t_arrival = time.perf_counter()
        trace = Trace(arrivals=[[(t_arrival, -1)] for _ in decoders])
        long_req = engine.add_request(long_prompt, long_params)
        while engine.has_unfinished():
            t0 = time.perf_counter()
            engine.step()
            now = time.perf_counter()
            batch = scheduled[-1]
            n = 0
            if long_req in batch.requests:
                n = batch.num_new_tokens[batch.requests.index(long_req)]
            in_batch = sum(1 for r in decoders if r in batch.requests)
            trace.steps.append((now - t0, n, in_batch))
            if long_req.num_output_tokens and not trace.ttft:
                trace.ttft = now - t_arrival
            for i, r in enumerate(decoders):
                if r.num_output_tokens > seen[i]:
                    seen[i] = r.num_output_tokens
                    trace.arrivals[i].append((now, len(trace.steps) - 1))
        assert all(r.num_output_tokens == decode_params.max_tokens for r in decoders)
    return trace


def timeline(model_dir: Path, args: argparse.Namespace) -> None:
    """Print which request computed how many tokens in each step (recorded from ``schedule``)."""
    from vibe_sgl_lite import ModelRunner, SamplingParams
    from vibe_sgl_lite.scheduler import ScheduledBatch

    chunk, budget = 8, 12
    with ModelRunner(
        model_dir,
        page_size=4,
        max_total_tokens=1024,
        chunked_prefill_size=chunk,
        max_prefill_tokens=budget,
        enable_prefix_cache=False,
    ) as runner:
        engine = runner.engine
        assert engine is not None
        steps: list[ScheduledBatch] = []
        schedule = engine.scheduler.schedule

        def recording_schedule() -> ScheduledBatch:
            steps.append(schedule())
            return steps[-1]

        engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]
        g = torch.Generator().manual_seed(0)

        def ids(n: int) -> list[int]:
            return torch.randint(1, args.vocab, (n,), generator=g).tolist()

        def params(n: int) -> SamplingParams:
            return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)

        reqs = [engine.add_request(ids(6), params(9)), engine.add_request(ids(5), params(9))]
        arrivals = {0: "A, B arrive (prompts of 6 and 5 tokens)"}
        engine.step()
        engine.step()
        reqs += [engine.add_request(ids(30), params(3)), engine.add_request(ids(10), params(3))]
        arrivals[2] = "C (30 tokens) and D (10 tokens) arrive"
        while engine.has_unfinished():
            engine.step()

    print(
        f"chunked_prefill_size={chunk}, max_prefill_tokens={budget}. P<n>: a prefill chunk of n "
        "tokens; P<n>*: the prompt's last chunk (samples the first token); d: a decode token; "
        ".: waiting; blank: not arrived yet, or finished"
    )
    names = "".join(f"  {chr(ord('A') + i):>4}" for i in range(len(reqs)))
    header = f"step{names}   prefill  decode   total"
    print(header)
    print("-" * len(header))
    arrived_at = [0, 0, 2, 2]
    last_step = [max(i for i, b in enumerate(steps) if r in b.requests) for r in reqs]
    for i, batch in enumerate(steps):
        cells, prefill, decode = [], 0, 0
        for req, arrived, last in zip(reqs, arrived_at, last_step):
            if req in batch.requests:
                n = batch.num_new_tokens[batch.requests.index(req)]
                before = _computed_before(steps, i, req)
                if before >= req.num_prompt_tokens:
                    decode += n
                    cell = "d"
                else:
                    prefill += n
                    cell = f"P{n}" + ("*" if before + n >= req.num_prompt_tokens else "")
            else:
                cell = "." if arrived <= i < last else ""
            cells.append(f"  {cell:>4}")
        note = f"   <- {arrivals[i]}" if i in arrivals else ""
        print(
            f"{i + 1:>4}{''.join(cells)}   {prefill:>7}  {decode:>6}  {prefill + decode:>6}{note}"
        )


def _computed_before(steps: list[Any], index: int, req: Any) -> int:
    """Tokens of ``req`` computed in the steps before ``steps[index]`` (no preemption here)."""
    return sum(
        n
        for batch in steps[:index]
        for r, n in zip(batch.requests, batch.num_new_tokens)
        if r is req
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-decoders", type=int, default=16)
    p.add_argument("--decoder-prompt-len", type=int, default=32)
    p.add_argument("--warmup-tokens", type=int, default=4, help="decode tokens before it arrives")
    p.add_argument("--prompt-len", type=int, default=8192, help="the long prompt")
    p.add_argument("--chunk", type=int, default=512, help="chunked_prefill_size of the 2nd run")
    p.add_argument("--page-size", type=int, default=16)
    add_common_args(p, hidden=128, layers=2, vocab=4096)
    p.add_argument("--timeline", action="store_true", help="print a step-by-step timeline only")
    args = p.parse_args()
    apply_threads(args)

    max_positions = max(9216, args.prompt_len + 1024)
    with random_qwen3(args, max_positions=max_positions) as model_dir:
        if args.timeline:
            timeline(model_dir, args)
            return
        whole = run(model_dir, args, None)
        chunked = run(model_dir, args, args.chunk)

    print(
        f"model: Qwen3 hidden={args.hidden} layers={args.layers} {args.dtype}, "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"workload: {args.num_decoders} requests decoding (prompts of {args.decoder_prompt_len}) "
        f"when a {args.prompt_len}-token prompt arrives"
    )
    print()
    print(
        f"{'chunked_prefill_size':>20}  {'max gap':>8}  {'median gap':>10}  "
        f"{'prompt steps':>12}  {'their time: median / max':>24}  {'prompt TTFT':>11}"
    )
    for name, t in (("None", whole), (str(args.chunk), chunked)):
        gaps = [g for g, _ in t.gaps()]
        steps = t.prompt_steps()
        print(
            f"{name:>20}  {max(gaps):7.3f}s  {statistics.median(gaps):9.3f}s  {len(steps):>12}  "
            f"{statistics.median(steps):14.3f}s / {max(steps):6.3f}s  {t.ttft:10.2f}s"
        )
    print()
    for name, t in (("unchunked", whole), ("chunked", chunked)):
        gap, step = max(t.gaps())
        print(f"largest gap {name:>9}: {gap:.3f} s, ended by {t.describe(step)}")
    decode_only = [s for s, n, d in whole.steps if n == 0 and d == args.num_decoders]
    print(
        f"a step of the {args.num_decoders} decodes alone takes "
        f"{statistics.median(decode_only):.3f} s (median)"
    )
    ratio = max(g for g, _ in whole.gaps()) / max(g for g, _ in chunked.gaps())
    print(
        f"largest stall {ratio:.1f}x shorter with chunks of {args.chunk}; unchunked, it is the "
        f"whole {args.prompt_len}-token prefill step"
    )


if __name__ == "__main__":
    main()
