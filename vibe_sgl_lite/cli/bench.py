"""``vibe-sgl-lite bench``: offline throughput against transformers (and llama.cpp), same run.

The workload is nano-vllm's offline benchmark, sized for a CPU: ``--num-prompts`` requests of
random token ids, prompt lengths uniform in ``--prompt-range`` (32..512) and output lengths
uniform in ``--output-range`` (32..256), each request with its own ``max_tokens``, greedy, EOS
ignored, drawn from ``--seed`` (the same ``--seed`` that seeds the runner). Every engine gets
the same weights and the same requests, and is scored in *output tokens per second*: the sum of
the requests' ``max_tokens`` over the wall time of the whole batch. Tokens an engine computes
and throws away (a static batch running on for its longest request) count as time, not output.

The columns, each timed after a small warm-up (first-call allocations, kernel picks):

* **transformers generate**: what a user of ``model.generate`` writes: the requests in arrival
  order, in static batches of ``--batch``, left-padded; each batch runs to its longest
  ``max_tokens`` and the outputs are cut to each request's own. It is the reference the others'
  outputs are compared with, token for token.
* **transformers continuous batching**: transformers' own paged, continuously batched engine.
  ``model.generate_batch`` takes a single ``max_new_tokens`` for every request, so it is driven
  through the manager ``generate_batch`` is built on (``continuous_batching_context_manager`` and
  ``add_request(max_new_tokens=...)``, what ``transformers serve`` does), giving each request
  its own limit. Its KV cache holds ``--max-total-tokens`` like ours, capped at what the
  workload can use (every request's prompt and output at once), not sized from free memory: a
  65,536-token float32 cache of the Qwen3-0.6B shape alone is 15 GB. Its tokens per step start
  at ``--max-prefill-tokens`` and are halved (down to 256; the column name says so) while its
  memory estimate, which grows with tokens per step times cache size, exceeds the machine's.
  Skipped, with the reason, when this transformers lacks it or it fails.
* **llama.cpp**: through ``llama-cpp-python`` when it is installed, continuously batched as
  ``llama-server`` runs many requests (``cli/llama_cpp_baseline.py``), on ``--gguf FILE``,
  ``--model FILE.gguf``, or else the model folder written to a temporary GGUF in the run's
  dtype (``models/gguf_export.py``; F32 for float32, so all engines multiply the same numbers).
* **vibe-sgl-lite**: ``ModelRunner.generate_outputs`` with one ``SamplingParams`` per request.

Each baseline's line ends with ``vibe-sgl-lite N.NNx`` (our tokens/s over its) and, after the
reference, how many of its outputs are identical to ``generate``'s: the check that the speed is
not bought with wrong answers (greedy in fp32 on the same weights, they should all be).

``--equal-lengths`` is the earlier benchmark: every prompt ``--prompt-len`` tokens, every
output ``--output-len``, and transformers' ``generate`` given all prompts as one batch.

The model is ``--model`` (a Hugging Face folder or a ``.gguf`` file) or, by default, a
random-weight Qwen3 of ``--shape`` built with transformers' own classes in a temporary folder.
``--dtype bfloat16`` is meant for CPUs with native bf16 (``avx512_bf16``/``amx_bf16``); elsewhere
it runs with a warning, since emulated bf16 measures the emulation. The command lives in the
package, not in the repository's ``benchmarks/`` folder, so an installed ``vibe-sgl-lite`` can
measure itself; ``benchmarks/throughput.py`` is this command under its old name.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import math
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vibe_sgl_lite.cli.flags import add_dataclass_flags
from vibe_sgl_lite.cli.llama_cpp_baseline import NOT_INSTALLED, LlamaCppEngine, llama_cpp_installed
from vibe_sgl_lite.config import DTYPES, EngineConfig
from vibe_sgl_lite.core.runner import ModelRunner, default_model_path
from vibe_sgl_lite.models.gguf_export import export_gguf
from vibe_sgl_lite.sampling import SamplingParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
"""The bundled model's tokenizer, copied into the random model: the package cannot use the
test suite's tokenizer factory, and prompts are random ids anyway (the tokenizer only turns the
outputs into text)."""

RANDOM_MODEL_MAX_POSITIONS = 4096

BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""``/proc/cpuinfo`` flags of CPUs that compute in bf16 natively (AVX-512 BF16 dot products,
AMX tiles). Without them torch converts bf16 to fp32 around every op: slower than fp32."""

DEFAULT_BATCH = 16
MIN_CB_BATCH_TOKENS = 256  # transformers continuous batching: smallest tokens per step tried
"""transformers ``generate``'s static batch: a user's typical batch size on a CPU."""

EQUAL_LENGTH = 64
"""``--equal-lengths``' prompt and output length unless ``--prompt-len``/``--output-len``."""


# ---- model shapes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """The sizes of a random Qwen3 (embeddings tied to the LM head, as in the small Qwen3s)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    def describe(self) -> str:
        return (
            f"hidden {self.hidden}, layers {self.layers}, heads {self.heads}/{self.kv_heads} "
            f"x {self.head_dim}, FFN {self.intermediate}, vocab {self.vocab}"
        )


SHAPES = {
    # The default: the real vocabulary (its 78M-parameter LM head is a large share of each
    # decode step, as in small real models) on a body a CPU decodes quickly.
    "small": Shape(
        hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64, intermediate=1536, vocab=151936
    ),
    # Qwen3-0.6B's published config.json.
    "qwen3-0.6b": Shape(
        hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=151936
    ),
}

SHAPE_FLAGS = ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab")
"""``Shape`` fields that a flag of the same name overrides (``--intermediate`` is the FFN)."""


def shape_of(args: argparse.Namespace) -> Shape:
    """``--shape``, with any of the ``SHAPE_FLAGS`` the command line sets replacing its sizes."""
    overrides = {k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None}
    return dataclasses.replace(SHAPES[args.shape], **overrides)


def build_random_qwen3(
    out_dir: Path,
    *,
    hidden: int,
    layers: int,
    vocab: int,
    max_positions: int,
    heads: int | None = None,
    kv_heads: int | None = None,
    head_dim: int = 64,
    intermediate: int | None = None,
    tie_embeddings: bool = False,
) -> Path:
    """A random Qwen3, written (seed 0, EOS id 0) with the bundled tokenizer to ``out_dir /
    "model"``; returns that folder.

    Sizes left out keep the original recipe the other benchmarks rely on: ``hidden // 64``
    heads, one KV head per 256 hidden, an FFN of ``3 * hidden``, an untied LM head.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=intermediate if intermediate is not None else hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=heads if heads is not None else max(1, hidden // 64),
        num_key_value_heads=kv_heads if kv_heads is not None else max(1, hidden // 256),
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model_dir = out_dir / "model"
    Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
    for name in TOKENIZER_FILES:
        (model_dir / name).write_bytes((default_model_path() / name).read_bytes())
    return model_dir


@contextmanager
def random_qwen3(shape: Shape, *, max_positions: int) -> Iterator[Path]:
    """``build_random_qwen3`` of ``shape`` (tied embeddings) in a temporary folder, removed
    afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        yield build_random_qwen3(
            Path(tmp),
            hidden=shape.hidden,
            layers=shape.layers,
            vocab=shape.vocab,
            max_positions=max_positions,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            intermediate=shape.intermediate,
            tie_embeddings=True,
        )


# ---- flags -----------------------------------------------------------------------------------


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
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
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
            "engine settings (vibe-sgl-lite's; --dtype, --device and --seed for all columns)"
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
    if args.threads < 0:
        raise ValueError(f"threads must be >= 0, got {args.threads}")
    if args.model_path is not None and not _is_model(Path(args.model_path)):
        raise ValueError(
            f"--model must be a Hugging Face model folder or a .gguf file, got {args.model_path}"
        )
    if args.gguf is not None and not (Path(args.gguf).is_file() and _is_gguf(Path(args.gguf))):
        raise ValueError(f"--gguf must be a .gguf file, got {args.gguf}")


def _is_gguf(path: Path) -> bool:
    return path.suffix.lower() == ".gguf"


def _is_model(path: Path) -> bool:
    return path.is_dir() or (path.is_file() and _is_gguf(path))


# ---- the workload --------------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """One offline request: its prompt ids and how many tokens to generate."""

    prompt: list[int]
    max_tokens: int


def make_workload(
    num_prompts: int,
    prompt_range: tuple[int, int],
    output_range: tuple[int, int],
    *,
    vocab: int,
    seed: int,
) -> list[Request]:
    """``num_prompts`` requests with lengths uniform in the (inclusive) ranges and prompt ids
    uniform in ``[1, vocab)`` (0 is the random model's EOS and the padding id); the same seed
    gives the same requests. Equal lengths are the ranges ``(n, n)``."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        prompt_len = rng.randint(*prompt_range)
        max_tokens = rng.randint(*output_range)
        prompt = [rng.randrange(1, vocab) for _ in range(prompt_len)]
        requests.append(Request(prompt, max_tokens))
    return requests


# ---- results ---------------------------------------------------------------------------------


@dataclass
class Column:
    """One engine's run: its time and outputs, or why it did not run (``skipped``)."""

    name: str
    seconds: float = math.nan
    outputs: list[list[int]] = dataclasses.field(default_factory=list)
    skipped: str | None = None


@dataclass
class BenchResult:
    """Everything the report prints, as data. ``columns[0]`` is the reference (transformers
    ``generate``) and ``ours`` is vibe-sgl-lite's column."""

    model: str
    num_params: int
    config: EngineConfig
    threads: int
    bf16_flags: tuple[str, ...] | None  # None: /proc/cpuinfo unreadable
    requests: list[Request]
    seed: int
    columns: list[Column]
    ours: Column

    @property
    def output_tokens(self) -> int:
        """The output every engine must produce: the sum of the requests' ``max_tokens``."""
        return sum(r.max_tokens for r in self.requests)

    def tokens_per_second(self, column: Column) -> float:
        return self.output_tokens / column.seconds

    def identical(self, column: Column) -> int:
        """How many of ``column``'s outputs equal the reference's, token for token."""
        reference = self.columns[0].outputs
        return sum(ours == ref for ours, ref in zip(column.outputs, reference))

    def report(self) -> list[str]:
        """The printed report: model, CPU, workload, then one line per column."""
        config, requests = self.config, self.requests
        device = "" if config.device == "cpu" else f", {config.device}"
        prompts = [len(r.prompt) for r in requests]
        outputs = [r.max_tokens for r in requests]
        lines = [
            f"model: {self.model}, {self.num_params / 1e6:.1f}M params, {config.dtype}{device}, "
            f"threads={self.threads}",
        ]
        if config.device == "cpu":
            lines += bf16_report(self.bf16_flags, config.dtype)
        lines.append(
            f"workload: {len(requests)} requests, prompts {_span(prompts)} tokens, outputs "
            f"{_span(outputs)} tokens ({self.output_tokens} in all), seed {self.seed}"
        )
        ours_rate = self.tokens_per_second(self.ours)
        width = max(len(c.name) for c in self.columns)
        for column in self.columns:
            if column.skipped is not None:
                lines.append(f"{column.name}: {column.skipped}")
                continue
            rate = self.tokens_per_second(column)
            speedup = "" if column is self.ours else f"vibe-sgl-lite {ours_rate / rate:5.2f}x"
            line = (
                f"{column.name + ':':<{width + 1}} {column.seconds:8.2f} s {rate:9.1f} tok/s   "
                f"{speedup:<20}"
            )
            if column is self.columns[0]:
                line += "   (reference outputs)"
            else:
                line += f"   identical greedy outputs: {self.identical(column)}/{len(requests)}"
            lines.append(line)
        return lines


def _span(lengths: list[int]) -> str:
    """``"min..max (mean m)"``, or ``"n"`` when all are equal."""
    if min(lengths) == max(lengths):
        return str(lengths[0])
    return f"{min(lengths)}..{max(lengths)} (mean {sum(lengths) / len(lengths):.0f})"


# ---- the CPU's bf16 --------------------------------------------------------------------------


def cpu_bf16_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> tuple[str, ...] | None:
    """The ``BF16_CPU_FLAGS`` this CPU reports (empty: none), or ``None`` without a readable
    ``/proc/cpuinfo`` (not Linux), where native bf16 is unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
    return tuple(f for f in BF16_CPU_FLAGS if f in flags)


def bf16_report(flags: tuple[str, ...] | None, dtype: str) -> list[str]:
    """The detection line, and a warning line when bf16 is asked for without native bf16."""
    if flags is None:
        lines = ["cpu: native bf16 unknown (no /proc/cpuinfo)"]
    elif flags:
        lines = [f"cpu: native bf16 ({', '.join(flags)})"]
    else:
        lines = [f"cpu: no native bf16 (neither {' nor '.join(BF16_CPU_FLAGS)} in /proc/cpuinfo)"]
    if dtype == "bfloat16" and not flags:
        lines.append(
            "warning: --dtype bfloat16 without native bf16: torch emulates it, so every column "
            "measures the emulation (slower than float32)"
        )
    return lines


# ---- running it ------------------------------------------------------------------------------


def run_bench(args: argparse.Namespace, config: EngineConfig) -> BenchResult:
    """Build or take the model, then ``measure_throughput`` with the flags' workload."""
    check_bench_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    bf16_flags = cpu_bf16_flags()
    if config.device == "cpu" and config.dtype == "bfloat16" and not bf16_flags:
        print(bf16_report(bf16_flags, config.dtype)[-1], file=sys.stderr)  # before the long run
    if args.equal_lengths:
        prompt_len, output_len = args.prompt_len or EQUAL_LENGTH, args.output_len or EQUAL_LENGTH
        prompt_range, output_range = (prompt_len, prompt_len), (output_len, output_len)
        batch = args.batch or args.num_prompts
    else:
        prompt_range, output_range = tuple(args.prompt_range), tuple(args.output_range)
        batch = args.batch or DEFAULT_BATCH
    gguf = Path(args.gguf) if args.gguf is not None else None
    measure = functools.partial(
        measure_throughput,
        config=config,
        num_prompts=args.num_prompts,
        prompt_range=prompt_range,
        output_range=output_range,
        batch=batch,
        gguf=gguf,
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
    if gguf is None and _is_gguf(model_path):
        gguf = model_path
    with _exported_gguf(model_path, config.dtype, gguf) as llama_file:
        columns.append(run_llama_cpp(llama_file, requests, config))
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


def load_transformers_model(model_path: Path, dtype: str, device: torch.device) -> Any:
    """transformers' model of a folder or a ``.gguf`` file, in eval mode, with EOS switched
    off: ``generate`` then runs each row to ``max_new_tokens`` whatever it samples.
    (``min_new_tokens`` would not do: it masks EOS out of the logits, so the greedy choice
    changes wherever EOS was the argmax, and the outputs would differ from an ``ignore_eos``
    engine's.)"""
    from transformers import AutoModelForCausalLM

    hf: Any
    if _is_gguf(model_path):
        hf = _transformers_from_gguf(model_path, DTYPES[dtype])
    else:
        hf = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=DTYPES[dtype])
    hf = hf.to(device).eval()
    hf.generation_config.eos_token_id = None
    return hf


def _transformers_from_gguf(path: Path, dtype: torch.dtype) -> Any:
    """transformers' own reading of a ``.gguf`` file, dequantised to ``dtype``.

    ``from_pretrained(folder, gguf_file=...)`` insists on ``accelerate``, which is not a
    dependency here; these are its steps: the config from the file's metadata, a model of it,
    then ``load_gguf_checkpoint`` (which dequantises and undoes llama.cpp's q/k permutation).
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = load_gguf_checkpoint(str(path), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = getattr(config, "tie_word_embeddings", False)
    if unexpected or set(missing) - ({"lm_head.weight"} if tied else set()):
        raise ValueError(
            f"transformers read {path.name} incompletely: missing {sorted(missing)}, "
            f"unexpected {sorted(unexpected)}"
        )
    model.tie_weights()
    return model


def run_transformers_generate(
    hf: Any, requests: list[Request], batch: int, device: torch.device
) -> Column:
    """``generate`` on static batches of ``batch`` requests in arrival order, left-padded with
    id 0; a batch runs until its longest request is done, and each output is cut to its
    request's ``max_tokens``."""
    column = Column(f"transformers generate (batches of {min(batch, len(requests))})")
    warm = torch.tensor([requests[0].prompt[:8]], device=device)
    with torch.no_grad():
        hf.generate(
            warm,
            attention_mask=torch.ones_like(warm),
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=0,
        )
    _synchronize(device)
    t0 = time.perf_counter()
    for start in range(0, len(requests), batch):
        chunk = requests[start : start + batch]
        width = max(len(r.prompt) for r in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, width - len(r.prompt) :] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt) :] = 1
        with torch.no_grad():
            out = hf.generate(
                ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max(r.max_tokens for r in chunk),
                do_sample=False,
                pad_token_id=0,
            )
        column.outputs += [
            out[i, width : width + r.max_tokens].tolist() for i, r in enumerate(chunk)
        ]
    _synchronize(device)
    column.seconds = time.perf_counter() - t0
    return column


class _DropPsutilNotices(logging.Filter):
    """Continuous batching logs, on a CPU without ``psutil``, that it cannot read memory (once
    as an error): irrelevant when the cache size is given, so kept off the report."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "psutil" not in record.getMessage()


def run_transformers_continuous_batching(
    hf: Any, requests: list[Request], config: EngineConfig
) -> Column:
    """transformers' continuous batching, each request with its own ``max_new_tokens`` and no
    EOS (``eos_token_id=-1``). Its cache gets our KV budget (``max_total_tokens``, capped at the
    workload's need) in its own pages, and ``max_prefill_tokens`` as its tokens per step, halved
    while it refuses them: left to size itself on a CPU it reserves a share of the machine's RAM,
    which takes seconds and slows every step."""
    column = Column("transformers continuous batching")
    try:
        from transformers import ContinuousBatchingConfig, GenerationConfig
    except ImportError:
        column.skipped = "skipped (this transformers has no ContinuousBatchingConfig)"
        return column
    if not hasattr(hf, "continuous_batching_context_manager"):
        column.skipped = "skipped (this transformers has no continuous batching)"
        return column
    cb_logger = logging.getLogger("ContinuousBatchingLogger")
    notices = _DropPsutilNotices()
    cb_logger.addFilter(notices)
    generation_config = GenerationConfig(
        do_sample=False, max_new_tokens=max(r.max_tokens for r in requests), eos_token_id=-1
    )
    need = sum(len(r.prompt) + r.max_tokens for r in requests)  # every request at once
    budget = min(config.max_total_tokens or need, need)
    max_batch_tokens = config.max_prefill_tokens
    try:
        while True:
            cb_config = ContinuousBatchingConfig(max_batch_tokens=max_batch_tokens)
            cb_config.num_blocks = max(1, math.ceil(budget / cb_config.page_size))
            try:
                with hf.continuous_batching_context_manager(
                    generation_config=generation_config,
                    continuous_batching_config=cb_config,
                    block=True,
                    timeout=10,
                ) as manager:
                    _collect(manager, [Request(requests[0].prompt[:8], 2)])  # warm-up
                    t0 = time.perf_counter()
                    column.outputs = _collect(manager, requests)
                    column.seconds = time.perf_counter() - t0
                break
            except MemoryError:
                # Its estimate grows with tokens per step x cache size; halve and retry.
                if max_batch_tokens <= MIN_CB_BATCH_TOKENS:
                    raise
                max_batch_tokens //= 2
                column.name = f"transformers continuous batching ({max_batch_tokens} tokens/step)"
    except Exception as exc:  # anything it raises on this machine: report, run the rest
        column.skipped = f"skipped ({type(exc).__name__}: {exc})"
    finally:
        cb_logger.removeFilter(notices)
    return column


def _collect(manager: Any, requests: list[Request]) -> list[list[int]]:
    """Submit ``requests`` to a running continuous-batching manager; their outputs in order."""
    ids = [
        manager.add_request(r.prompt, max_new_tokens=r.max_tokens, eos_token_id=-1)
        for r in requests
    ]
    done: dict[str, list[int]] = {}
    while len(done) < len(ids):
        result = manager.get_result(timeout=1)
        if result is None:
            if not manager.is_running():
                raise RuntimeError("its generation thread stopped")
            continue
        if result.error is not None:
            raise RuntimeError(result.error)
        if result.is_finished():
            done[result.request_id] = list(result.generated_tokens)
    return [done[i] for i in ids]


@contextmanager
def _exported_gguf(model_path: Path, dtype: str, gguf: Path | None) -> Iterator[Path | None]:
    """``gguf``, or, when llama.cpp is installed and none was given, ``model_path`` (a folder)
    written to a temporary ``.gguf`` in ``dtype`` (F32 for float32: the same numbers llama.cpp
    and this engine multiply), so that llama.cpp runs on the same weights as the others."""
    if gguf is not None or not llama_cpp_installed() or _is_gguf(model_path):
        yield gguf
        return
    storage = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}[dtype]
    with tempfile.TemporaryDirectory(prefix="vibe-sgl-lite-gguf-") as tmp:
        exported: Path | None
        try:
            exported = export_gguf(model_path, Path(tmp) / f"model.{storage.lower()}.gguf", storage)
        except (ValueError, ImportError) as exc:  # an architecture or tokenizer it cannot write
            print(f"llama.cpp: no GGUF ({exc})", file=sys.stderr)
            exported = None
        yield exported


def run_llama_cpp(gguf: Path | None, requests: list[Request], config: EngineConfig) -> Column:
    """llama.cpp on ``gguf``, continuously batched like ``llama-server`` (``LlamaCppEngine``:
    as many sequences at once as ours, ``--max-running-requests``), greedy, each request
    exactly its ``max_tokens``. Skipped without the package or a ``.gguf``."""
    column = Column("llama.cpp")
    if not llama_cpp_installed():
        column.skipped = NOT_INSTALLED
        return column
    if gguf is None:
        column.skipped = "skipped (needs a .gguf file: --gguf FILE or --model FILE.gguf)"
        return column
    try:
        max_seqs = min(len(requests), config.max_running_requests)
        lengths = sorted((len(r.prompt) + r.max_tokens for r in requests), reverse=True)
        kv_dtype = "float32" if config.dtype == "float32" else "float16"
        with LlamaCppEngine(
            gguf,
            max_seqs=max_seqs,
            n_ctx=sum(lengths[:max_seqs]),
            threads=torch.get_num_threads(),
            kv_dtype=kv_dtype,
        ) as llm:
            if max(max(r.prompt) for r in requests) >= llm.n_vocab:
                column.skipped = f"skipped (prompt ids exceed its vocabulary of {llm.n_vocab})"
                return column
            llm.generate([(requests[0].prompt[:8], 2)])  # warm-up
            t0 = time.perf_counter()
            column.outputs = llm.generate([(r.prompt, r.max_tokens) for r in requests])
            column.seconds = time.perf_counter() - t0
    except Exception as exc:  # a file it cannot read, an architecture it lacks: report
        column.skipped = f"skipped ({type(exc).__name__}: {exc})"
    return column


def run_vibe_sgl_lite(model_path: Path, config: EngineConfig, requests: list[Request]) -> Column:
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


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads when the work ends, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
