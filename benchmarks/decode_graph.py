"""Decode graphs (``enable_torch_compile``): small models without Python between the ops.

For each ``--batch`` (default 1, 4 and 8 requests at once), three columns on the same weights,
all greedy with EOS ignored, ``--prompt-len`` random prompt tokens and ``--new-tokens`` new ones
each, prefill included in the time:

* ``eager``: ``ModelRunner(model)`` as it runs by default;
* ``compiled``: ``ModelRunner(model, enable_torch_compile=True)``: every decode step of up to
  ``torch_compile_max_bs`` rows replays an inductor-compiled graph (``models/decode_graph.py``);
* ``llama.cpp``: the model written to an F32 GGUF (``models/gguf_export.py``), continuously
  batched over one context (``bench/llama_cpp.py``), float32 KV cache, as many threads.

Both runners are loaded first, warmed up (the compiled one compiles each bucket there: the
seconds are printed), then timed in turns ``--repeats`` times, best run each, so background load
on a shared machine hits them alike. ``same`` counts requests whose compiled tokens equal the
eager ones (they must: the tests check it) and whose llama.cpp tokens equal ours.

    python benchmarks/decode_graph.py --threads 1
    python benchmarks/decode_graph.py --threads 1 --model scripts/_cache/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from pathlib import Path

import common  # noqa: F401  (puts the checkout on sys.path)
import torch
from decode_step import cpu_name

from vibe_sgl_lite.bench.llama_cpp import LlamaCppEngine, exported_gguf, llama_cpp_installed
from vibe_sgl_lite.core.runner import ModelRunner, default_model_path
from vibe_sgl_lite.models.worker import ModelWorker
from vibe_sgl_lite.sampling import SamplingParams

Generate = Callable[[list[list[int]]], list[list[int]]]


def best_seconds(generate: Generate, prompts: list[list[int]], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        generate(prompts)
        best = min(best, time.perf_counter() - start)
    return best


def ours(runner: ModelRunner, new_tokens: int) -> Generate:
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)

    def generate(prompts: list[list[int]]) -> list[list[int]]:
        return [o.token_ids for o in runner.generate_outputs(prompts, params)]

    return generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=default_model_path())
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quantization",
        choices=["int8", "int8_weight_only", "int4"],
        help="both of ours quantised (then no llama.cpp column: it runs F32 here)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = dict(
        num_threads=args.threads,
        enable_prefix_cache=False,
        max_total_tokens=16384,
        quantization=args.quantization,
    )
    eager = ModelRunner(args.model, **settings)
    compiled = ModelRunner(
        args.model, enable_torch_compile=True, torch_compile_max_bs=max(args.batch), **settings
    )
    vocab = eager.engine.model_config.vocab_size
    rng = random.Random(args.seed)
    print(f"cpu: {cpu_name()}; threads={args.threads}; torch {torch.__version__}")
    print(
        f"model: {args.model} ({eager.engine.model_config.architecture}), weights "
        f"{args.quantization or 'float32'}"
    )
    print(
        f"{args.prompt_len} prompt tokens, {args.new_tokens} new tokens a request, best of "
        f"{args.repeats}, prefill included"
    )
    with exported_gguf(args.model, "float32", None) as gguf:
        print(
            f"{'batch':>5} {'eager':>9} {'compiled':>9} {'llama.cpp':>9} {'x eager':>8} "
            f"{'x llama.cpp':>11}  same (eager, llama.cpp)   tok/s"
        )
        for batch in args.batch:
            prompts = [[rng.randrange(vocab) for _ in range(args.prompt_len)] for _ in range(batch)]
            runs = {
                "eager": ours(eager, args.new_tokens),
                "compiled": ours(compiled, args.new_tokens),
            }
            tokens = {name: generate(prompts) for name, generate in runs.items()}  # warm-up
            seconds = {name: float("inf") for name in runs}
            for _ in range(args.repeats):
                for name, generate in runs.items():
                    seconds[name] = min(seconds[name], best_seconds(generate, prompts, 1))
            llama = "-"
            same_llama = "-"
            if gguf is not None and llama_cpp_installed() and args.quantization is None:
                n_ctx = batch * (args.prompt_len + args.new_tokens + 16)
                with LlamaCppEngine(gguf, max_seqs=batch, n_ctx=n_ctx, threads=args.threads) as lc:
                    requests = [(p, args.new_tokens) for p in prompts]
                    llama_tokens = lc.generate(requests)
                    llama_s = best_seconds(lambda _: lc.generate(requests), prompts, args.repeats)
                llama = f"{batch * args.new_tokens / llama_s:9.1f}"
                same_llama = str(sum(a == b for a, b in zip(llama_tokens, tokens["eager"])))
            tps = {name: batch * args.new_tokens / s for name, s in seconds.items()}
            vs_llama = (
                f"{tps['compiled'] / (batch * args.new_tokens / llama_s):11.2f}"
                if llama != "-"
                else f"{'-':>11}"
            )
            same = sum(a == b for a, b in zip(tokens["compiled"], tokens["eager"]))
            print(
                f"{batch:>5} {tps['eager']:9.1f} {tps['compiled']:9.1f} {llama:>9} "
                f"{tps['compiled'] / tps['eager']:8.2f} {vs_llama}  {same}/{batch}, "
                f"{same_llama}/{batch}"
            )
    worker = compiled.engine.executor
    assert isinstance(worker, ModelWorker) and worker.graphs is not None
    graphs = worker.graphs
    compile_s = ", ".join(
        f"batch {b}: {s:.1f} s" for b, s in sorted(graphs.capture_seconds.items())
    )
    print(
        f"compile (once per process; inductor caches on disk): {compile_s or '-'}"
        + (f"; failed: {graphs.failure}" if graphs.failure else "")
    )


if __name__ == "__main__":
    main()
