"""Quantisation: decode tokens/s with fp32, int8 (W8A8), int8 weight-only and int4 weights,
against our own fp32 and against llama.cpp on the same weights, same run; batch 1 by default.

Why batch 1 first. Decoding one sequence multiplies a single activation row by every weight matrix:
about two flops per weight read, so the step is bound by reading the weights, and storing them
in 8 (4) bits instead of 32 is meant to make it up to 4x (8x) faster. This script measures how
much of that the engine gets (``x fp32``) and how it compares with llama.cpp, the program a CPU
user would otherwise run, on the same weights (``ours/llama.cpp``).

What is measured. For each model (``--model``, repeatable: a Hugging Face folder or a ``.gguf``
file; by default the bundled model and, when ``scripts/fetch_test_gguf.py`` has fetched it,
SmolLM2-135M-Instruct Q4_1 from ``scripts/_cache``) and each weights kind:

* ``ours tok/s``: ``ModelRunner(model, quantization=None | "int8" | "int8_weight_only" |
  "int4")`` (``int8`` rounds the activations to int8 too, the others keep them float32; float32
  KV cache, prefix cache off so that a repeat recomputes its prompt), ``--batch`` requests
  (default 1) at once, each ``--prompt-len`` random token ids (below the vocabulary, ``--seed``)
  and ``--new-tokens`` greedy tokens with EOS ignored. Every kind is loaded at once, one warm-up
  ``generate_outputs`` each, then ``--repeats`` rounds in which the kinds take turns, so that
  background load hits them alike; each keeps its best wall time (load only ever slows a run);
  tokens/s = all requests' new tokens / that time. **The prefill is inside the time**: a 32-token prompt
  against 128 new tokens, it is a small share, but int4's fused kernel is slower than a GEMM
  at prefill (``models/quantization.py``), and that is counted against it, as a user would feel
  it. ``x fp32`` is a row's tokens/s over the fp32 row's.
* ``llama.cpp tok/s``: ``LlamaCppEngine`` (``bench/llama_cpp.py``: greedy, float32 KV
  cache, one sequence, torch's thread count), the same prompt, the same timing, on a GGUF:

  - for a folder, the folder exported by ``models/gguf_export.py`` to F32 (fp32 row), Q8_0
    (int8 row) and Q4_0 (int4 row). Block types need every matrix row length to be a multiple
    of 32; where an export fails its reason is printed and the cells read ``-``;
  - for a ``.gguf`` file, the file itself on the row of its kind (Q4_0/Q4_1 matrices: int4;
    Q8_0: int8; all F32: fp32), what a llama.cpp user runs; ``-`` on the other rows (a GGUF is
    not re-exported);
  - ``-`` everywhere, with one line saying so, when ``llama-cpp-python`` is not installed.

  Each llama.cpp run is a child process (``LlamaCppChild``), so that a crash in its native code
  costs a row, not the run. One such crash is known: a llama.cpp built with AMX kernels dies
  with SIGILL on Q8_0/Q4_x weights where the CPU advertises AMX that the (virtual) machine does
  not enable; the row and the later ones then rerun with ``use_extra_bufts=False`` (no AMX, no
  repacked weights: slower than llama.cpp at its best), and the notes under the table say so.

* ``same tokens``: how many of the new tokens ours and llama.cpp's greedy outputs share before
  they first differ (``128/128``: identical). On the fp32 row both multiply the same float32
  numbers, so they should agree (for the first request). Quantised rows need not: our int8
  weights have one scale per output row (Q8_0: one per 32 weights), our int4 is asymmetric groups of 32 with an int8 LM head (Q4_0:
  symmetric groups, the LM head Q4_0 too), and llama.cpp also rounds the activations to 8 bits
  for its quantised dot products. On a GGUF file our int4 (int8) multiplies the file's own
  Q4_0/Q4_1 and Q8_0 (Q8_0) blocks as llama.cpp does; ``benchmarks/gguf_files.py`` compares
  the two engines on such files at several batch sizes.

Not measured: a step's breakdown (``benchmarks/decode_step.py``) and
quality (``vibe-sgl-lite eval`` perplexity); a greedy-token prefix is only a coarse check.

    python benchmarks/quantization.py --threads 1
    python benchmarks/quantization.py --threads 1 --batch 32 --model scripts/_cache/SmolLM2-135M-Instruct.Q4_1.gguf
    python benchmarks/quantization.py --threads 1 --model path/to/hf-folder --model path/to/x.gguf
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import common
import torch
from decode_step import cpu_name

from vibe_sgl_lite.bench.llama_cpp import NOT_INSTALLED, LlamaCppEngine, llama_cpp_installed
from vibe_sgl_lite.core.runner import ModelRunner, default_model_path
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.gguf import is_gguf_file
from vibe_sgl_lite.models.gguf_export import export_gguf
from vibe_sgl_lite.sampling import SamplingParams

WEIGHTS = ("fp32", "int8", "int8_weight_only", "int4")
QUANTIZATION: dict[str, str | None] = {w: None if w == "fp32" else w for w in WEIGHTS}
EXPORT_STORAGE = {"fp32": "F32", "int8": "Q8_0", "int8_weight_only": "Q8_0", "int4": "Q4_0"}
"""The GGUF type llama.cpp gets for each row when the model is a folder: the closest llama.cpp
counterpart of our mode."""

SMOLLM2_GGUF = (
    Path(__file__).resolve().parents[1] / "scripts" / "_cache" / "SmolLM2-135M-Instruct.Q4_1.gguf"
)
"""Where ``scripts/fetch_test_gguf.py`` puts the real GGUF that ``tests/models/test_gguf.py``
loads: a default model when present."""

CHILD_FLAG = "--llama-cpp-child"
"""Run as ``python quantization.py CHILD_FLAG``: one llama.cpp measurement (``LlamaCppChild``)."""

POOL_SLACK = 32
"""KV pool tokens beyond the prompt and the new tokens: the partly filled last page."""


# ---- timing ----------------------------------------------------------------------------------


@dataclass
class Generation:
    """One engine on one set of weights: best-of-repeats decode speed and its greedy ids."""

    tokens_per_second: float
    token_ids: list[int]  # [new_tokens]
    outputs: list[list[int]] = dataclasses.field(default_factory=list)  # every sequence's ids


@dataclass
class Runs:
    """The best wall time of timed calls, and the new ids of every sequence of the last one."""

    best: float = math.inf
    outputs: list[list[int]] = dataclasses.field(default_factory=list)

    def time(self, generate: Callable[[], list[list[int]]]) -> None:
        start = time.perf_counter()
        self.outputs = generate()
        self.best = min(self.best, time.perf_counter() - start)

    def generation(self, new_tokens: int) -> Generation:
        """All sequences' new tokens over the best time; the first sequence's ids."""
        if any(len(ids) != new_tokens for ids in self.outputs):
            raise RuntimeError(f"asked for {new_tokens} tokens (EOS ignored) per sequence")
        return Generation(
            len(self.outputs) * new_tokens / self.best, self.outputs[0], list(self.outputs)
        )


def best_of(generate: Callable[[], list[list[int]]], new_tokens: int, repeats: int) -> Generation:
    """One warm-up call (first-use allocations, kernel picks, thread pool start), then the best
    of ``repeats`` timed calls; each call returns the new ids of every sequence."""
    generate()
    runs = Runs()
    for _ in range(repeats):
        runs.time(generate)
    return runs.generation(new_tokens)


def measure_ours(
    model: Path,
    prompts: list[list[int]],
    new_tokens: int,
    repeats: int,
    kinds: Sequence[str] = WEIGHTS,
    **settings: Any,
) -> dict[str, Generation]:
    """Our engine on each kind of weights (``kinds``, default ``WEIGHTS``; ``settings``: more
    ``ModelRunner`` settings), all ``prompts`` at once, on torch's thread count (passed on: the engine would otherwise pick its own from the
    load average).

    Every kind is loaded first and the timed runs take turns (fp32, int8, ..., then again), so
    that background load on a shared machine hits every kind alike instead of whichever ran
    while another job did; each kind keeps its best run after one warm-up."""
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    pool = sum(len(p) + new_tokens + POOL_SLACK for p in prompts)
    with ExitStack() as stack:
        runners = {
            weights: stack.enter_context(
                ModelRunner(
                    model,
                    quantization=QUANTIZATION[weights],
                    max_total_tokens=pool,
                    enable_prefix_cache=False,
                    num_threads=torch.get_num_threads(),
                    **settings,
                )
            )
            for weights in kinds
        }

        def generate(runner: ModelRunner) -> list[list[int]]:
            outputs = runner.generate_outputs(prompts, params)
            for output in outputs:
                if output.error is not None:
                    raise ValueError(output.error)
            return [output.token_ids for output in outputs]

        runs = {weights: Runs() for weights in kinds}
        for runner in runners.values():
            generate(runner)
        for _ in range(repeats):
            for weights, runner in runners.items():
                runs[weights].time(lambda: generate(runner))
    return {weights: r.generation(new_tokens) for weights, r in runs.items()}


def measure_llama_cpp(
    gguf: Path,
    prompts: list[list[int]],
    new_tokens: int,
    repeats: int,
    threads: int,
    extra_buffers: bool = True,
) -> Generation:
    """llama.cpp on ``gguf``, all ``prompts`` as sequences of one context (one ``llama_decode``
    per step over all of them), with the KV cache in float32 as ours."""
    with LlamaCppEngine(
        gguf,
        max_seqs=len(prompts),
        n_ctx=sum(len(p) + new_tokens + POOL_SLACK for p in prompts),
        threads=threads,
        kv_dtype="float32",
        extra_buffers=extra_buffers,
    ) as llm:
        return best_of(
            lambda: llm.generate([(p, new_tokens) for p in prompts]), new_tokens, repeats
        )


class LlamaCppChild:
    """Each llama.cpp measurement in a child process (this script with ``CHILD_FLAG``), so that
    a crash in llama.cpp's native code costs one row, not the run.

    The crash that made this necessary: a llama.cpp built for a CPU with AMX uses AMX tiles for
    Q4_0/Q4_1/Q8_0 matrices, and where the CPU flags advertise AMX but the (virtual) machine
    does not let the process use it, the first ``tilezero`` kills the process with SIGILL. After
    such a crash the row, and every later one, runs with ``use_extra_bufts = False``: no AMX and
    no repacked weights, ggml's plain CPU kernels, slower than llama.cpp at its best; the rows'
    notes say so.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.extra_buffers = True

    def measure(
        self, gguf: Path, prompts: list[list[int]], new_tokens: int, repeats: int
    ) -> tuple[Generation | None, str]:
        """llama.cpp's ``Generation``, or ``None``; and what to add to the row's note."""
        result = self._run(gguf, prompts, new_tokens, repeats)
        if result == -signal.SIGILL and self.extra_buffers:
            self.extra_buffers = False
            result = self._run(gguf, prompts, new_tokens, repeats)
        note = "" if self.extra_buffers else f"; {NO_EXTRA_BUFFERS}"
        if isinstance(result, Generation):
            return result, note
        if isinstance(result, int):
            died = f"signal {signal.Signals(-result).name}" if result < 0 else f"exit {result}"
            return None, f"{note}; llama.cpp died ({died})"
        return None, f"{note}; llama.cpp failed: {result}"

    def _run(
        self, gguf: Path, prompts: list[list[int]], new_tokens: int, repeats: int
    ) -> Generation | int | str:
        """The child's ``Generation``, its return code if it died, or its error's last line."""
        request = dict(
            gguf=str(gguf),
            prompts=prompts,
            new_tokens=new_tokens,
            repeats=repeats,
            threads=self.threads,
            extra_buffers=self.extra_buffers,
        )
        child = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), CHILD_FLAG],
            input=json.dumps(request),
            capture_output=True,
            text=True,
        )
        if child.returncode == 0:
            return Generation(**json.loads(child.stdout.splitlines()[-1]))
        lines = child.stderr.strip().splitlines()
        if child.returncode < 0 or not lines:
            return child.returncode
        return lines[-1]


NO_EXTRA_BUFFERS = (
    "use_extra_bufts=False: llama.cpp's AMX kernels died with SIGILL here, so no AMX and no "
    "repacked weights"
)


def llama_cpp_child() -> None:
    """``CHILD_FLAG``: one ``measure_llama_cpp`` of the JSON request on stdin; its
    ``Generation`` as one JSON line on stdout."""
    request = json.load(sys.stdin)
    result = measure_llama_cpp(
        Path(request["gguf"]),
        request["prompts"],
        request["new_tokens"],
        request["repeats"],
        request["threads"],
        request["extra_buffers"],
    )
    print(json.dumps(dataclasses.asdict(result)))


# ---- which GGUF llama.cpp runs ---------------------------------------------------------------


def gguf_matrix_types(path: Path) -> Counter[str]:
    """How many matrices (tensors of 2 or more dimensions) of each ggml type ``path`` holds:
    what a quantisation is about, since every llama.cpp file keeps its 1-D norms in F32."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) >= 2)


def gguf_weights_kind(types: Counter[str]) -> str | None:
    """The row a GGUF belongs on: any 4-bit block matrix makes it int4 (llama.cpp's Q4 files
    keep a few matrices in Q8_0 or F16), else any Q8_0 int8, else all-F32 fp32; ``None`` for
    other types (F16, K-quants)."""
    if types.keys() & {"Q4_0", "Q4_1"}:
        return "int4"
    if "Q8_0" in types:
        return "int8"
    if set(types) == {"F32"}:
        return "fp32"
    return None


def describe_types(types: Counter[str]) -> str:
    """``Q4_1 x210, Q8_0 x1``: most common first."""
    return ", ".join(f"{name} x{count}" for name, count in types.most_common())


def llama_cpp_gguf(model: Path, weights: str, tmp: Path) -> tuple[Path | None, str]:
    """The GGUF llama.cpp runs on the ``weights`` row and what it is, or ``None`` and why
    there is none (see the module docstring)."""
    if is_gguf_file(model):
        types = gguf_matrix_types(model)
        kind = gguf_weights_kind(types)
        if kind == weights:
            return model, f"the file itself ({describe_types(types)})"
        return None, f"the file is {kind or 'of no row'} ({describe_types(types)}); not re-exported"
    from gguf.quants import QuantError

    storage = EXPORT_STORAGE[weights]
    try:
        return export_gguf(model, tmp / f"model-{storage}.gguf", storage), f"exported {storage}"
    except (QuantError, ValueError) as exc:
        return None, f"export to {storage} failed: {exc}"


# ---- one model -------------------------------------------------------------------------------


def speed_ratio(ours: Generation, theirs: Generation | None) -> float | None:
    """Our tokens/s over llama.cpp's (``None`` without a llama.cpp run)."""
    if theirs is None:
        return None
    return ours.tokens_per_second / theirs.tokens_per_second


@dataclass
class WeightsResult:
    """One row: our engine and llama.cpp on one kind of weights."""

    weights: str  # fp32, int8, int4
    ours: Generation
    llama_cpp: Generation | None  # None: no llama.cpp run (``llama_cpp_weights`` says why)
    llama_cpp_weights: str  # what llama.cpp ran ("exported Q4_0") or why it ran nothing

    @property
    def ratio(self) -> float | None:
        return speed_ratio(self.ours, self.llama_cpp)

    @property
    def same_tokens(self) -> int | None:
        """Length of the common prefix of our and llama.cpp's new tokens."""
        if self.llama_cpp is None:
            return None
        pairs = zip(self.ours.token_ids, self.llama_cpp.token_ids)
        return next((i for i, (a, b) in enumerate(pairs) if a != b), len(self.ours.token_ids))


@dataclass
class ModelResult:
    model: str
    description: str
    new_tokens: int
    rows: list[WeightsResult]

    def row(self, weights: str) -> WeightsResult:
        return next(r for r in self.rows if r.weights == weights)

    def speedup(self, weights: str) -> float:
        """``x fp32``: our tokens/s on ``weights`` over our fp32 tokens/s."""
        fp32 = self.row("fp32").ours.tokens_per_second
        return self.row(weights).ours.tokens_per_second / fp32

    def table(self, llama_cpp_installed: bool) -> list[str]:
        lines = [f"model: {self.model} ({self.description})", TABLE_HEADER]
        for r in self.rows:
            cells = [
                f"{r.weights:>16} {r.ours.tokens_per_second:>10.1f} {self.speedup(r.weights):>6.2f}"
            ]
            if r.llama_cpp is None:
                cells.append(f"{'-':>15} {'-':>14} {'-':>11}")
            else:
                same = f"{r.same_tokens}/{self.new_tokens}"
                cells.append(f"{r.llama_cpp.tokens_per_second:>15.1f} {r.ratio:>14.2f} {same:>11}")
            lines.append(" ".join(cells))
        if llama_cpp_installed:
            lines += [f"  llama.cpp {r.weights}: {r.llama_cpp_weights}" for r in self.rows]
        return lines


TABLE_HEADER = (
    f"{'weights':>16} {'ours tok/s':>10} {'x fp32':>6} {'llama.cpp tok/s':>15} "
    f"{'ours/llama.cpp':>14} {'same tokens':>11}"
)


def describe_model(model: Path, config: ModelConfig) -> str:
    """Architecture, sizes, and the stored weights' format."""
    sizes = (
        f"{config.architecture}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, "
        f"FFN {config.intermediate_size}, vocab {config.vocab_size}"
    )
    if is_gguf_file(model):
        return f"{sizes}; GGUF matrices {describe_types(gguf_matrix_types(model))}"
    dtype = config.raw.get("dtype") or config.raw.get("torch_dtype") or "float32"
    return f"{sizes}; Hugging Face folder, {dtype} safetensors"


def measure_model(
    model: Path, args: argparse.Namespace, llama_cpp_child: LlamaCppChild | None
) -> ModelResult:
    """Each row: ours, then llama.cpp's on the GGUF of ``llama_cpp_gguf`` (``None``: not
    installed). Exports live in a temporary folder, each removed after its row: an F32 export
    is as large as the model."""
    config = ModelConfig.from_path(model)
    rng = random.Random(args.seed)
    prompts = [
        [rng.randrange(1, config.vocab_size) for _ in range(args.prompt_len)]
        for _ in range(args.batch)
    ]
    rows = []
    measured = measure_ours(model, prompts, args.new_tokens, args.repeats)
    with tempfile.TemporaryDirectory(prefix="quantization-gguf-") as tmp:
        for weights in WEIGHTS:
            ours = measured[weights]
            llama_cpp, what = None, NOT_INSTALLED
            if llama_cpp_child is not None:
                gguf, what = llama_cpp_gguf(model, weights, Path(tmp))
                if gguf is not None:
                    llama_cpp, note = llama_cpp_child.measure(
                        gguf, prompts, args.new_tokens, args.repeats
                    )
                    what += note
                    if gguf != model:
                        gguf.unlink()
            rows.append(WeightsResult(weights, ours, llama_cpp, what))
    return ModelResult(str(model), describe_model(model, config), args.new_tokens, rows)


# ---- the whole run ---------------------------------------------------------------------------


@dataclass
class QuantizationReport:
    cpu: str
    threads: int
    date: str
    prompt_len: int
    new_tokens: int
    repeats: int
    llama_cpp_installed: bool
    batch: int
    models: list[ModelResult]

    def header(self) -> list[str]:
        return [
            f"cpu: {self.cpu}",
            f"torch threads: {self.threads} (llama.cpp the same)",
            f"date: {self.date}",
            f"workload: batch {self.batch}, {self.prompt_len} random prompt tokens, "
            f"{self.new_tokens} greedy new tokens each (EOS ignored); ours: every kind loaded, "
            f"best of {self.repeats} runs taken in turns after one warm-up each; tok/s = new "
            "tokens / wall time of the whole generate, prefill included",
        ]


def default_models() -> list[Path]:
    """The bundled model, and SmolLM2 Q4_1 when it has been fetched."""
    return [default_model_path()] + ([SMOLLM2_GGUF] if SMOLLM2_GGUF.is_file() else [])


def main(argv: Sequence[str] | None = None) -> QuantizationReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        help="a Hugging Face folder or a .gguf file; repeatable (default: the bundled model, "
        "and SmolLM2 Q4_1 from scripts/_cache when fetched)",
    )
    parser.add_argument("--prompt-len", type=int, default=32, help="random prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=128, help="greedy tokens generated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the best counts")
    parser.add_argument("--seed", type=int, default=0, help="of the random prompts")
    parser.add_argument(
        "--batch", type=int, default=1, help="requests generated together (each its own prompt)"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
    )
    args = parser.parse_args(argv)
    for name in ("prompt_len", "new_tokens", "repeats", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    common.apply_threads(args)
    start = time.perf_counter()
    report = QuantizationReport(
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        date=datetime.now().strftime("%Y-%m-%d %H:%M"),
        prompt_len=args.prompt_len,
        new_tokens=args.new_tokens,
        repeats=args.repeats,
        llama_cpp_installed=llama_cpp_installed(),
        models=[],
        batch=args.batch,
    )
    for line in report.header():
        print(line, flush=True)
    if not report.llama_cpp_installed:
        print(f"llama.cpp: {NOT_INSTALLED}", flush=True)
    child = LlamaCppChild(report.threads) if report.llama_cpp_installed else None
    for model in args.model or default_models():
        result = measure_model(model, args, child)
        report.models.append(result)
        print("", *result.table(report.llama_cpp_installed), sep="\n", flush=True)
    print(f"total {time.perf_counter() - start:.1f} s")
    return report


if __name__ == "__main__":
    if sys.argv[1:] == [CHILD_FLAG]:
        llama_cpp_child()
    else:
        main()
