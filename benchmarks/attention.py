"""The attention part of a decode step, backend against backend, beside the machine's limits.

For each batch size and context length this builds one decode step over a paged pool (pages
handed out shuffled, as after some churn), then times ``prepare`` + ``forward`` of one layer
per backend (store and attend, what every layer pays every step) and prints:

* milliseconds per layer and the speedup of each backend over the first (``--backends``);
* the KV bytes a copy-free read must touch (``2 * batch * context * kv_heads * head_dim *
  itemsize``) per second, as a fraction of the memory bandwidth measured in the same run
  with a large ``torch.Tensor.copy_`` (read + write counted).

    python benchmarks/attention.py --threads 1
    python benchmarks/attention.py --shape qwen3-0.6b --contexts 512 4096 --batches 1 64
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import common
import torch

from vibe_sgl_lite.batch import BatchRow, ForwardBatch
from vibe_sgl_lite.kernels import ATTENTION_BACKENDS, get_attention_backend

SHAPES = {"small": (8, 4, 64), "qwen3-0.6b": (16, 8, 128)}  # (query heads, kv heads, head_dim)


def memory_bandwidth(num_bytes: int = 1 << 28, repeats: int = 5) -> float:
    """Bytes per second moved by one large copy (source read + destination written)."""
    src = torch.ones(num_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * num_bytes / best


def _timed(fn: object, repeats: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / repeats


def decode_step(
    batch_size: int,
    context: int,
    page_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
) -> tuple[ForwardBatch, tuple[torch.Tensor, torch.Tensor]]:
    pages_per_row = -(-context // page_size)
    pages = list(range(1, batch_size * pages_per_row + 1))
    random.Random(0).shuffle(pages)
    rows = [
        BatchRow([1], context - 1, pages[i * pages_per_row : (i + 1) * pages_per_row], True)
        for i in range(batch_size)
    ]
    batch = ForwardBatch.build(rows, page_size, torch.device("cpu"))
    num_slots = (len(pages) + 1) * page_size
    cache = (
        torch.randn(num_slots, num_kv_heads, head_dim).to(dtype),
        torch.randn(num_slots, num_kv_heads, head_dim).to(dtype),
    )
    return batch, cache


def time_backend(
    name: str, batch: ForwardBatch, cache: tuple[torch.Tensor, torch.Tensor], heads: int, iters: int
) -> float:
    """Median seconds of ``prepare`` + one layer's ``forward``."""
    backend = get_attention_backend(name)
    kv_heads, head_dim = cache[0].shape[1], cache[0].shape[2]
    dtype = cache[0].dtype
    q = torch.randn(batch.num_tokens, heads, head_dim).to(dtype)
    k = torch.randn(batch.num_tokens, kv_heads, head_dim).to(dtype)
    v = torch.randn_like(k)

    def step() -> None:
        backend.prepare(batch)
        backend.forward(q, k, v, cache, batch, head_dim**-0.5)

    step()  # warm-up: first-use builds and allocations
    return statistics.median(_timed(step) for _ in range(iters))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backends", nargs="+", default=["reference", "torch"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    for name in args.backends:
        if name not in ATTENTION_BACKENDS:
            parser.error(f"--backends: {name!r} is not one of {', '.join(ATTENTION_BACKENDS)}")
    common.apply_threads(args)
    dtype = getattr(torch, args.dtype)
    heads, kv_heads, head_dim = SHAPES[args.shape]
    bandwidth = memory_bandwidth()
    print(
        f"shape {args.shape} (heads {heads}/{kv_heads}, head_dim {head_dim}), {args.dtype}, "
        f"page_size {args.page_size}, threads {torch.get_num_threads()}; "
        f"measured memory bandwidth {bandwidth / 1e9:.1f} GB/s"
    )
    base = args.backends[0]
    cols = "".join(f"{n + ' ms':>14}" for n in args.backends)
    ratios = "".join(f"{'x ' + n:>14}" for n in args.backends[1:])
    fracs = "".join(f"{'bw ' + n:>14}" for n in args.backends)
    print(f"{'batch':>5} {'context':>7}{cols}{ratios}{fracs}")
    for batch_size in args.batches:
        for context in args.contexts:
            batch, cache = decode_step(
                batch_size, context, args.page_size, kv_heads, head_dim, dtype
            )
            seconds = {n: time_backend(n, batch, cache, heads, args.iters) for n in args.backends}
            kv_bytes = 2 * batch_size * context * kv_heads * head_dim * cache[0].element_size()
            line = f"{batch_size:>5} {context:>7}"
            line += "".join(f"{seconds[n] * 1e3:>14.3f}" for n in args.backends)
            line += "".join(f"{seconds[base] / seconds[n]:>13.2f}x" for n in args.backends[1:])
            line += "".join(f"{kv_bytes / seconds[n] / bandwidth:>14.0%}" for n in args.backends)
            print(line, flush=True)


if __name__ == "__main__":
    main()
