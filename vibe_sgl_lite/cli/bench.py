"""``vibe-sgl-lite bench``: its flags; the benchmark itself is ``vibe_sgl_lite.bench``.

Offline throughput against transformers (and llama.cpp), same run, same weights, same requests:
the package's docstring describes the workload and the columns. This module holds only what
the command line needs before anything runs (the flags and their checks), so ``vibe-sgl-lite
--help`` loads neither torch nor transformers: ``run_bench`` imports the harness when called.

The names that lived here before the harness became a package (``build_random_qwen3``,
``BenchResult``, ``make_workload``...) still resolve, lazily, from their new modules.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vibe_sgl_lite.bench.shapes import SHAPE_FLAGS, SHAPES, is_gguf, is_model
from vibe_sgl_lite.bench.workload import DEFAULT_BATCH, EQUAL_LENGTH
from vibe_sgl_lite.cli.flags import add_dataclass_flags
from vibe_sgl_lite.config import EngineConfig

if TYPE_CHECKING:
    from vibe_sgl_lite.bench.report import BenchResult


def add_bench_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The workload, model, baseline and engine flags; returns the engine flags' destinations."""
    parser.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=None,
        help="Hugging Face model folder or .gguf file (default: a random-weight Qwen3 of "
        "--shape, built in a temporary folder)",
    )
    work = parser.add_argument_group("workload (greedy, EOS ignored; drawn from --seed)")
    work.add_argument("--num-prompts", type=int, default=64, help="requests")
    work.add_argument(
        "--prompt-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(32, 512),
        help="prompt lengths, uniform in [MIN, MAX]",
    )
    work.add_argument(
        "--output-range",
        type=int,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=(32, 256),
        help="output lengths (each request's max_tokens), uniform in [MIN, MAX]",
    )
    work.add_argument(
        "--equal-lengths",
        action="store_true",
        help="the earlier benchmark: every prompt --prompt-len tokens, every output --output-len, "
        "and transformers' generate given all prompts as one batch",
    )
    for name in ("prompt", "output"):
        work.add_argument(
            f"--{name}-len",
            type=int,
            default=None,
            help=f"{name} length with --equal-lengths (default: {EQUAL_LENGTH})",
        )
    base = parser.add_argument_group("baselines")
    base.add_argument(
        "--batch",
        type=int,
        default=None,
        help="transformers generate's static batch size (default: "
        f"{DEFAULT_BATCH}; all prompts with --equal-lengths)",
    )
    base.add_argument(
        "--gguf",
        default=None,
        help="a .gguf file for the llama.cpp column, needs llama-cpp-python (default: --model "
        "when it is a .gguf file, else no llama.cpp column)",
    )
    random_model = parser.add_argument_group(
        "random model (ignored with --model); a size flag overrides the shape's"
    )
    random_model.add_argument("--shape", default="small", choices=tuple(SHAPES), help="sizes")
    for name in SHAPE_FLAGS:
        label = "FFN size" if name == "intermediate" else name.replace("_", " ")
        random_model.add_argument(
            "--" + name.replace("_", "-"),
            type=int,
            default=None,
            help=f"{label} (default: the shape's)",
        )
    # A pool sized for the workload, not mem_fraction of free memory: on a CPU that would be
    # a share of the machine's RAM, reserved up front for a few thousand tokens.
    return add_dataclass_flags(
        parser.add_argument_group(
            "engine settings (vibe-sgl-lite's; --dtype, --device, --seed, --threads: all columns)"
        ),
        EngineConfig,
        defaults={"max_total_tokens": 65536},
    )


def check_bench_flags(args: argparse.Namespace) -> None:
    """``ValueError`` for sizes that cannot work, before anything is built or loaded."""
    sizes = ["num_prompts", "prompt_len", "output_len", "batch", *SHAPE_FLAGS]
    for name in sizes:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    for name in ("prompt_range", "output_range"):
        low, high = getattr(args, name)
        if not 1 <= low <= high:
            raise ValueError(f"{name} must be MIN MAX with 1 <= MIN <= MAX, got {low} {high}")
    if not args.equal_lengths and (args.prompt_len, args.output_len) != (None, None):
        raise ValueError(
            "--prompt-len and --output-len need --equal-lengths (otherwise lengths are drawn "
            "from --prompt-range and --output-range)"
        )
    if args.model_path is not None and not is_model(Path(args.model_path)):
        raise ValueError(
            f"--model must be a Hugging Face model folder or a .gguf file, got {args.model_path}"
        )
    if args.gguf is not None and not (Path(args.gguf).is_file() and is_gguf(Path(args.gguf))):
        raise ValueError(f"--gguf must be a .gguf file, got {args.gguf}")


def run_bench(args: argparse.Namespace, config: EngineConfig) -> BenchResult:
    """Check the flags, then run the benchmark (``vibe_sgl_lite.bench.harness.run_bench``):
    torch and transformers load here, not when the parser is built."""
    check_bench_flags(args)
    from vibe_sgl_lite.bench.harness import run_bench as run

    return run(args, config)


_MOVED = {
    "vibe_sgl_lite.bench.shapes": (
        "TOKENIZER_FILES",
        "RANDOM_MODEL_MAX_POSITIONS",
        "Shape",
        "shape_of",
        "build_random_qwen3",
        "random_qwen3",
    ),
    "vibe_sgl_lite.bench.workload": ("BenchRequest", "make_workload"),
    "vibe_sgl_lite.bench.report": (
        "BF16_CPU_FLAGS",
        "Column",
        "BenchResult",
        "cpu_bf16_flags",
        "bf16_report",
    ),
    "vibe_sgl_lite.bench.transformers_baseline": (
        "MIN_CB_BATCH_TOKENS",
        "load_transformers_model",
        "run_transformers_generate",
        "run_transformers_continuous_batching",
    ),
    "vibe_sgl_lite.bench.llama_cpp": ("run_llama_cpp",),
    "vibe_sgl_lite.bench.harness": ("measure_throughput", "run_vibe_sgl_lite"),
}
"""Where each name this module used to define lives now (``__getattr__`` imports it)."""


def __getattr__(name: str) -> Any:
    """The harness's names at their old address, imported on first use (PEP 562): importing
    this module stays free of torch. ``Request`` is ``BenchRequest``'s old name."""
    if name == "Request":
        name = "BenchRequest"
    for module, names in _MOVED.items():
        if name in names:
            return getattr(importlib.import_module(module), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
