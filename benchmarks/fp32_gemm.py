"""float32 products: MKL (``F.linear`` over the column-major weights) against our loop
(``kernels/fp32_gemm.py``), on every matrix of a model's decoder in turn, as a step reads them,
and the machine's read bandwidth over the same bytes (``Tensor.sum`` of each weight).

Prints, per row count M, the microseconds of one sweep over all the weights with each product,
the GB/s of weights each reaches, and MKL's time over ours. ``--threads`` as in every benchmark
(default 1). The engine runs every float32 CPU product through our loop by default
(``fp32_gemm_max_rows``): this is the measurement behind that default, to rerun on each machine.

    python benchmarks/fp32_gemm.py --shape bundled --shape qwen3-small --rows 1 4 16 64 256
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import common  # noqa: F401  (puts the checkout on sys.path)
import torch
import torch.nn.functional as F
from decode_step import cpu_name

from vibe_sgl_lite.kernels import fp32_gemm

# (hidden, intermediate, q heads x head_dim, kv heads x head_dim, layers, vocab)
SHAPES = {
    "bundled": (256, 768, 256, 128, 4, 4096),
    "smollm2-135m": (576, 1536, 576, 192, 30, 49152),
    "qwen3-small": (512, 1536, 512, 256, 8, 151936),
    "qwen3-0.6b": (1024, 3072, 2048, 1024, 28, 151936),
}


def decoder_weights(shape: str, with_head: bool) -> list[torch.Tensor]:
    """The column-major ``[N, K]`` weights of a decoder: per layer QKV, O, gate-up, down."""
    hidden, inter, q, kv, layers, vocab = SHAPES[shape]
    sizes = [(q + 2 * kv, hidden), (hidden, q), (2 * inter, hidden), (hidden, inter)] * layers
    if with_head:
        sizes.append((vocab, hidden))
    return [torch.randn(n, k).t().contiguous().t() for n, k in sizes]


def sweep_seconds(step: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", action="append", choices=sorted(SHAPES))
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-head", action="store_true", help="leave the LM head out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_name()}; threads={args.threads}; torch {torch.__version__}; ")
    print(f"our loop's instruction sets here: {', '.join(fp32_gemm.supported_isas())}")
    for shape in args.shape or ["bundled"]:
        weights = decoder_weights(shape, not args.no_head)
        megabytes = sum(w.numel() for w in weights) * 4 / 1e6
        read = sweep_seconds(lambda: [w.sum() for w in weights], args.repeats)
        print(
            f"\n{shape}: {len(weights)} matrices, {megabytes:.1f} MB; "
            f"read (sum) {read * 1e6:.0f} us = {megabytes / 1e3 / read:.1f} GB/s"
        )
        print(f"{'M':>3} {'MKL us':>9} {'GB/s':>6} {'ours us':>9} {'GB/s':>6} {'MKL/ours':>9}")
        for m in args.rows:
            xs = {k: torch.randn(m, k) for k in {w.shape[1] for w in weights}}
            mkl = sweep_seconds(
                lambda: [F.linear(xs[w.shape[1]], w) for w in weights], args.repeats
            )
            ours = sweep_seconds(
                lambda: [fp32_gemm.fp32_linear(xs[w.shape[1]], w) for w in weights],
                args.repeats,
            )
            print(
                f"{m:>3} {mkl * 1e6:9.0f} {megabytes / 1e3 / mkl:6.1f} {ours * 1e6:9.0f} "
                f"{megabytes / 1e3 / ours:6.1f} {mkl / ours:8.2f}x"
            )


if __name__ == "__main__":
    main()
