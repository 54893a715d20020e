"""Threads: what the second (third, ...) core buys on the realistic workload, part by part.

One runner per thread count on the realistic workload of ``benchmarks/throughput.py`` (``--num-prompts``
requests, prompts uniform in 32-512 tokens, outputs in 32-256, greedy, EOS ignored, prefix cache
off so that every run recomputes), timed at each ``--threads`` count in turns (``1 2 1 2 ...``,
best of ``--repeats``), so that background load on a shared machine hits every count alike.
Each run is split in two by a second, prompt-only run (every request with ``max_tokens=1``):

* ``prefill``: the prompt-only run, compute-bound products over hundreds of rows;
* ``decode``: the rest, batches of up to ``--num-prompts`` rows, products of few rows plus
  everything that is not a product (norms, rotary, attention, sampling, the engine's Python).

The same run measures the machine's own scaling: the best ``torch.mm`` of 1024x1024 float32 at
each thread count (what compute-bound parts can gain) and the best 256 MiB copy (what
memory-bound ones can: a decode step reads every weight once for few rows). A ratio of products near the thread count means the cores are free; a ratio
well below it means other work shares them, and then no engine figure from that run says what
its threads are worth.

    python benchmarks/threads.py
    python benchmarks/threads.py --threads 1 2 --num-prompts 32 --enable-torch-compile
"""

from __future__ import annotations

import argparse
import time

import common  # noqa: F401  (puts the checkout on sys.path)
import torch
from decode_step import cpu_name

from vibe_sgl_lite.bench.shapes import SHAPES, random_qwen3
from vibe_sgl_lite.bench.workload import make_workload
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams


def mm_gflops(threads: int, size: int = 1024, calls: int = 20) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / calls)
    return 2 * size**3 / best / 1e9


def copy_gb_per_s(threads: int, mib: int = 256) -> float:
    """Read + write bandwidth of one large copy: what memory-bound steps can gain."""
    torch.set_num_threads(threads)
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * src.numel() * 4 / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--num-prompts", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--enable-torch-compile", action="store_true")
    parser.add_argument("--torch-compile-max-bs", type=int, default=8)
    args = parser.parse_args()
    shape = SHAPES[args.shape]
    requests = make_workload(args.num_prompts, (32, 512), (32, 256), vocab=shape.vocab, seed=0)
    prompts = [r.prompt for r in requests]
    full = [
        SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in requests
    ]
    prefill_only = SamplingParams(temperature=0, max_tokens=1, ignore_eos=True)
    new_tokens = sum(r.max_tokens for r in requests)
    print(f"cpu: {cpu_name()}; torch {torch.__version__}")
    print(f"model: random Qwen3 {args.shape} ({shape.describe()}), float32")
    print(f"workload: {len(requests)} requests, {new_tokens} new tokens, seed {args.seed}")
    with random_qwen3(shape, max_positions=1024) as model:
        # One runner per thread count: a compiled graph's parallel loops keep the thread count
        # they were compiled with, so each count gets graphs of its own.
        runners = {
            n: ModelRunner(
                model,
                enable_prefix_cache=False,
                num_threads=n,
                seed=args.seed,
                enable_torch_compile=args.enable_torch_compile,
                torch_compile_max_bs=args.torch_compile_max_bs,
            )
            for n in args.threads
        }
        for n, runner in runners.items():
            torch.set_num_threads(n)
            runner.generate_outputs(prompts[:8], full[:8])  # warm-up (and compile)
        total = {n: float("inf") for n in args.threads}
        prefill = {n: float("inf") for n in args.threads}
        outputs: dict[int, list[list[int]]] = {}
        for _ in range(args.repeats):
            for n, runner in runners.items():
                torch.set_num_threads(n)
                start = time.perf_counter()
                runner.generate_outputs(prompts, [prefill_only] * len(prompts))
                prefill[n] = min(prefill[n], time.perf_counter() - start)
                start = time.perf_counter()
                outs = runner.generate_outputs(prompts, full)
                total[n] = min(total[n], time.perf_counter() - start)
                outputs[n] = [o.token_ids for o in outs]
        for runner in runners.values():
            runner.close()
    gflops = {n: mm_gflops(n) for n in args.threads}
    bandwidth = {n: copy_gb_per_s(n) for n in args.threads}
    base = args.threads[0]
    print(
        f"{'threads':>7} {'total s':>8} {'prefill s':>9} {'decode s':>8} {'tok/s':>7} "
        f"{'x total':>7} {'x prefill':>9} {'x decode':>8} {'mm GFLOP/s':>10} {'x mm':>5} "
        f"{'copy GB/s':>9} {'x copy':>6}"
    )
    for n in args.threads:
        decode, base_decode = total[n] - prefill[n], total[base] - prefill[base]
        print(
            f"{n:>7} {total[n]:8.2f} {prefill[n]:9.2f} {decode:8.2f} "
            f"{new_tokens / total[n]:7.1f} {total[base] / total[n]:7.2f} "
            f"{prefill[base] / prefill[n]:9.2f} {base_decode / decode:8.2f} "
            f"{gflops[n]:10.1f} {gflops[n] / gflops[base]:5.2f} "
            f"{bandwidth[n]:9.1f} {bandwidth[n] / bandwidth[base]:6.2f}"
        )
    same = all(outputs[n] == outputs[base] for n in args.threads)
    print(f"identical greedy outputs at every thread count: {same}")


if __name__ == "__main__":
    main()
