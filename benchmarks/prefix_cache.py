"""Prefix caching: many requests behind one shared system prompt, cache on vs off, same run.

Builds a random-weight Qwen3 in a temporary folder, then sends ``--num-requests`` prompts made of
one shared ``--system-len``-token system prompt and a distinct ``--question-len``-token question
each (random token ids), ``--output-len`` greedy tokens per request with EOS ignored. It runs the
workload with ``enable_prefix_cache=True`` and ``False`` and prints:

* prefill tokens computed / unique prompt tokens (1.0 = every shared token computed once),
* throughput with the cache on / off,
* whether the greedy outputs of both runs are identical.

    python benchmarks/prefix_cache.py                      # 64 x (1024 + 32) -> 32, a few minutes
    python benchmarks/prefix_cache.py --num-requests 16    # quicker

The default dtype is float32: on a CPU without native bfloat16 (AVX2 only) float32 is faster, and
greedy outputs are then exactly equal with the cache on and off. In bfloat16 a few greedy
continuations of this random model can flip even with the cache *off*, between running a prompt
alone and in a batch (matmul rounding depends on the batch shape), so the equality line reports
numerics there, not the cache.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import add_common_args, apply_threads, random_qwen3


def make_prompts(args: argparse.Namespace) -> list[list[int]]:
    """One shared system prompt + a distinct question per request (random ids, no EOS id 0)."""
    g = torch.Generator().manual_seed(0)
    system = torch.randint(1, args.vocab, (args.system_len,), generator=g).tolist()
    questions = torch.randint(1, args.vocab, (args.num_requests, args.question_len), generator=g)
    return [system + q.tolist() for q in questions]


def run(
    model_dir: Path, prompts: list[list[int]], args: argparse.Namespace, enable_prefix_cache: bool
) -> tuple[float, int, float, list[list[int]]]:
    """Seconds, prefill tokens computed, cache hit rate and output ids of one workload run."""
    from vibe_sgl_lite import ModelRunner, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    pool = len(prompts) * (len(prompts[0]) + args.output_len + args.page_size)
    with ModelRunner(
        model_dir,
        dtype=args.dtype,
        page_size=args.page_size,
        max_total_tokens=pool,
        enable_prefix_cache=enable_prefix_cache,
    ) as runner:
        runner.generate_outputs([[1, 2, 3, 4, 5, 6, 7, 8]], params)  # warm-up
        runner.flush_cache()
        before = runner.get_stats()
        t0 = time.perf_counter()
        outs = runner.generate_outputs(prompts, params)
        seconds = time.perf_counter() - t0
        after = runner.get_stats()
    key = "num_prefill_tokens_computed"
    computed = int(after[key]) - int(before[key])
    hits = sum(o.num_cached_tokens for o in outs) / sum(len(p) for p in prompts)
    return seconds, computed, hits, [o.token_ids for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-requests", type=int, default=64)
    p.add_argument("--system-len", type=int, default=1024)
    p.add_argument("--question-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    p.add_argument("--page-size", type=int, default=16)
    add_common_args(p, hidden=256, layers=4, vocab=4096)
    args = p.parse_args()
    apply_threads(args)

    prompts = make_prompts(args)
    unique = args.system_len + args.num_requests * args.question_len
    max_positions = max(2048, args.system_len + args.question_len + args.output_len + 64)
    with random_qwen3(args, max_positions=max_positions) as model_dir:
        on_s, on_computed, on_hits, on_ids = run(model_dir, prompts, args, True)
        off_s, off_computed, _, off_ids = run(model_dir, prompts, args, False)

    total_out = args.num_requests * args.output_len
    print(
        f"model: Qwen3 hidden={args.hidden} layers={args.layers} vocab={args.vocab} {args.dtype}, "
        f"page_size={args.page_size}, threads={torch.get_num_threads()}"
    )
    print(
        f"workload: {args.num_requests} requests x ({args.system_len}-token shared system prompt "
        f"+ {args.question_len}-token question) -> {args.output_len} tokens each"
    )
    print(f"unique prompt tokens:            {unique}")
    print(
        f"prefill tokens computed, cache on:  {on_computed:6d}  "
        f"({on_computed / unique:.3f} x unique; target <= 1.1)"
    )
    print(f"prefill tokens computed, cache off: {off_computed:6d}  ({off_computed / unique:.3f} x)")
    print(f"prompt tokens served from the cache (num_cached_tokens): {on_hits:.1%}")
    print(f"cache on:  {on_s:7.2f} s  {total_out / on_s:8.1f} output tok/s")
    print(f"cache off: {off_s:7.2f} s  {total_out / off_s:8.1f} output tok/s")
    same = sum(a == b for a, b in zip(on_ids, off_ids))
    print(f"throughput cache on / off: {off_s / on_s:.2f}x")
    print(f"identical greedy outputs (on vs off): {same}/{len(on_ids)}")


if __name__ == "__main__":
    main()
