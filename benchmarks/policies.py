"""Scheduling policies under a small KV pool: which order keeps shared prefixes cached?

Builds a random-weight Qwen3 in a temporary folder. ``--groups`` groups of ``--per-group``
requests; the requests of a group share a ``--prefix-len``-token prefix and add a distinct
``--suffix-len``-token suffix. All requests are submitted at once, interleaved across groups
(A B C D A B C D ...). The pool (``max_total_tokens``) has room for about two prefixes plus the
running requests' own tokens, fewer than the number of groups, so the order decides whether a
group's prefix is still cached when its next request is admitted:

* ``fcfs`` admits in arrival order, A B C D A ...: every group competes for the pool, and a
  prefix is usually evicted (LRU) before its group's next request runs;
* ``lpm`` admits the longest cached prefix first, and ``dfs-weight`` walks the radix tree: a
  group runs back to back while its prefix is cached.

For each policy it prints the cache hit rate (``get_stats()["cache_hit_rate"]``), the prefill
tokens computed, evicted pages, preemptions and time, and checks that the greedy outputs are
identical across policies (the order changes when a request runs, never what it generates).

    python benchmarks/policies.py
    python benchmarks/policies.py --policies fcfs,lpm --per-group 4
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import add_common_args, apply_threads, random_qwen3


def make_prompts(args: argparse.Namespace) -> tuple[list[list[int]], list[str]]:
    """Interleaved prompts (A B C D A B C D ...) and the group letter of each."""
    g = torch.Generator().manual_seed(0)
    prefixes = torch.randint(1, args.vocab, (args.groups, args.prefix_len), generator=g).tolist()
    prompts, labels = [], []
    for _ in range(args.per_group):
        for k, prefix in enumerate(prefixes):
            suffix = torch.randint(1, args.vocab, (args.suffix_len,), generator=g).tolist()
            prompts.append(prefix + suffix)
            labels.append(chr(ord("A") + k))
    return prompts, labels


def run(
    model_dir: Path, prompts: list[list[int]], args: argparse.Namespace, policy: str, pool: int
) -> tuple[dict[str, float | int], float, list[list[int]]]:
    from vibe_sgl_lite import ModelRunner, SamplingParams

    params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
    with ModelRunner(
        model_dir,
        dtype=args.dtype,
        page_size=args.page_size,
        max_total_tokens=pool,
        max_running_requests=args.max_running,
        schedule_policy=policy,
    ) as runner:
        t0 = time.perf_counter()
        outs = runner.generate_outputs(prompts, params)
        seconds = time.perf_counter() - t0
        stats = runner.get_stats()
    return stats, seconds, [o.token_ids for o in outs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--groups", type=int, default=4)
    p.add_argument("--per-group", type=int, default=8)
    p.add_argument("--prefix-len", type=int, default=512)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--output-len", type=int, default=16)
    p.add_argument("--max-running", type=int, default=4, help="max_running_requests")
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=None,
        help="KV pool; default: two prefixes + room for the running requests' own tokens",
    )
    p.add_argument("--policies", default="fcfs,lpm,dfs-weight,random")
    p.add_argument("--page-size", type=int, default=16)
    add_common_args(p, hidden=128, layers=2, vocab=4096)
    args = p.parse_args()
    apply_threads(args)

    prompts, labels = make_prompts(args)
    own = args.suffix_len + args.output_len + args.page_size
    pool = args.max_total_tokens or 2 * args.prefix_len + args.max_running * own
    unique = args.groups * args.prefix_len + len(prompts) * args.suffix_len
    results: dict[str, tuple[dict[str, float | int], float, list[list[int]]]] = {}
    max_positions = max(2048, args.prefix_len + args.suffix_len + args.output_len + 64)
    with random_qwen3(args, max_positions=max_positions) as model_dir:
        for policy in args.policies.split(","):
            results[policy] = run(model_dir, prompts, args, policy, pool)

    print(
        f"model: Qwen3 hidden={args.hidden} layers={args.layers} {args.dtype}, "
        f"page_size={args.page_size}, threads={torch.get_num_threads()}"
    )
    print(
        f"workload: {args.groups} groups x {args.per_group} requests, {args.prefix_len}-token "
        f"shared prefix + {args.suffix_len}-token suffix -> {args.output_len} tokens; submitted "
        f"{' '.join(labels[: 2 * args.groups])} ..."
    )
    print(
        f"max_running_requests={args.max_running}, max_total_tokens={pool} "
        f"(~{pool / args.prefix_len:.1f} prefixes); unique prompt tokens: {unique}"
    )
    print()
    print(
        f"{'policy':>10}  {'hit rate':>8}  {'prefill computed':>16}  {'x unique':>8}  "
        f"{'evicted pages':>13}  {'preemptions':>11}  {'time':>7}"
    )
    for policy, (stats, seconds, _) in results.items():
        computed = int(stats["num_prefill_tokens_computed"])
        print(
            f"{policy:>10}  {stats['cache_hit_rate']:8.1%}  {computed:16d}  "
            f"{computed / unique:8.2f}  {stats['num_evicted_pages']:13d}  "
            f"{stats['num_preemptions']:11d}  {seconds:6.2f}s"
        )
    first, *rest = results
    ref = results[first][2]
    same = all(results[name][2] == ref for name in rest)
    print()
    print(f"identical greedy outputs across {', '.join(results)}: {same}")


if __name__ == "__main__":
    main()
