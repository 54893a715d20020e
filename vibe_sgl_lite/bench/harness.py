"""Running the benchmark: every column on one workload, one model in memory at a time.

The columns, in the order they run (transformers' model serves its two, then is freed):

1. transformers ``generate``, the reference (``transformers_baseline.py``);
2. transformers continuous batching (``transformers_baseline.py``);
3. llama.cpp, when ``llama-cpp-python`` is installed (``llama_cpp.py``);
4. **vibe-sgl-lite**: ``ModelRunner.generate_outputs`` with one ``SamplingParams`` per request.

``run_bench`` takes the CLI's flags (checked by ``cli/bench.py``'s ``check_bench_flags``),
builds the random model unless ``--model`` names one, and hands over to ``measure_throughput``,
which returns a ``BenchResult`` (``report.py``) rather than printing: tests and scripts read
the figures as data.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import time
from pathlib import Path

import torch

from vibe_sgl_lite.bench.llama_cpp import exported_gguf, run_llama_cpp
from vibe_sgl_lite.bench.report import BenchResult, Column, bf16_report, cpu_bf16_flags
from vibe_sgl_lite.bench.shapes import (
    RANDOM_MODEL_MAX_POSITIONS,
    SHAPES,
    is_gguf,
    random_qwen3,
    shape_of,
)
from vibe_sgl_lite.bench.transformers_baseline import (
    load_transformers_model,
    run_transformers_continuous_batching,
    run_transformers_generate,
)
from vibe_sgl_lite.bench.workload import BenchRequest, make_workload, workload_sizes
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams


def run_bench(args: argparse.Namespace, config: EngineConfig) -> BenchResult:
    """Build or take the model, then ``measure_throughput`` with the flags' workload."""
    torch.set_num_threads(config.threads_per_rank)  # every column, not only ours (the Engine's)
    bf16_flags = cpu_bf16_flags()
    if config.device == "cpu" and config.dtype == "bfloat16" and not bf16_flags:
        print(bf16_report(bf16_flags, config.dtype)[-1], file=sys.stderr)  # before the long run
    prompt_range, output_range, batch = workload_sizes(args)
    measure = functools.partial(
        measure_throughput,
        config=config,
        num_prompts=args.num_prompts,
        prompt_range=prompt_range,
        output_range=output_range,
        batch=batch,
        gguf=Path(args.gguf) if args.gguf is not None else None,
        bf16_flags=bf16_flags,
    )
    if args.model_path is not None:
        model_path = Path(args.model_path)
        return measure(model_path, name=model_path.name)
    shape = shape_of(args)
    positions = max(RANDOM_MODEL_MAX_POSITIONS, prompt_range[1] + output_range[1])
    label = args.shape if shape == SHAPES[args.shape] else "resized"
    with random_qwen3(shape, max_positions=positions) as model_dir:
        return measure(model_dir, name=f"random Qwen3 {label} ({shape.describe()})")


def measure_throughput(
    model_path: Path,
    config: EngineConfig,
    *,
    name: str,
    num_prompts: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    batch: int,
    gguf: Path | None = None,
    bf16_flags: tuple[str, ...] | None = None,
) -> BenchResult:
    """Run every column on one workload, one model in memory at a time: transformers' model
    (its two columns), then llama.cpp's, then ours."""
    device = torch.device(config.device)
    hf = load_transformers_model(model_path, config.dtype, device)
    max_positions = getattr(hf.config, "max_position_embeddings", None)
    longest = prompt_range[1] + output_range[1]
    if max_positions is not None and longest > max_positions:
        raise ValueError(
            f"the longest prompt + output, {longest} tokens, exceeds the model's "
            f"{max_positions} positions"
        )
    requests = make_workload(
        num_prompts, prompt_range, output_range, vocab=hf.config.vocab_size, seed=config.seed
    )
    num_params = sum(p.numel() for p in hf.parameters())
    columns = [
        run_transformers_generate(hf, requests, batch, device),
        run_transformers_continuous_batching(hf, requests, config),
    ]
    del hf
    if device.type == "cuda":
        torch.cuda.empty_cache()  # our KV pool is sized from free memory
    if gguf is None and is_gguf(model_path):
        gguf = model_path
    with exported_gguf(model_path, config.dtype, gguf) as llama_file:
        columns.append(run_llama_cpp(llama_file, requests, config, torch.get_num_threads()))
    ours = run_vibe_sgl_lite(model_path, config, requests)
    columns.append(ours)
    return BenchResult(
        model=name,
        num_params=num_params,
        config=config,
        threads=torch.get_num_threads(),
        bf16_flags=bf16_flags,
        requests=requests,
        seed=config.seed,
        columns=columns,
        ours=ours,
    )


def run_vibe_sgl_lite(
    model_path: Path, config: EngineConfig, requests: list[BenchRequest]
) -> Column:
    """Our engine: ``ModelRunner.generate_outputs`` on every request at once, each with its own
    ``SamplingParams`` (greedy, its ``max_tokens``, EOS ignored)."""
    column = Column("vibe-sgl-lite")
    params = [
        SamplingParams(temperature=0, max_tokens=r.max_tokens, ignore_eos=True) for r in requests
    ]
    with ModelRunner(model_path, **dataclasses.asdict(config)) as runner:
        runner.generate_outputs([requests[0].prompt[:8]], params[0])  # warm-up
        t0 = time.perf_counter()
        outs = runner.generate_outputs([r.prompt for r in requests], params)
        column.seconds = time.perf_counter() - t0
    errors = [o.error for o in outs if o.error is not None]
    if errors:
        raise ValueError(errors[0])
    column.outputs = [list(o.token_ids) for o in outs]
    return column
