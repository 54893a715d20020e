"""One decode step of the real engine, taken apart, beside the machine's limits from the same run.

What is measured. For each batch size B (``--batches``) the script adds B requests to one
``Engine`` (through ``ModelRunner``), each with ``--context`` random prompt tokens and greedy
decoding with EOS ignored, steps the engine until every request has its first token (the
prefill is done and every further step is a pure decode of B rows), then times ``Engine.step``
(schedule, build rows, forward, logit plugins, sample, detokenise, finish) and prints per B:

* ``step ms``, ``tok/s``: the median step and B tokens per median step;
* the step's time split into four shares that sum to 1:

  - ``matmul``: every ``nn.Linear`` of the model (q/k/v and output projections, the SwiGLU's
    gate/up and down, the LM head): the matrix products that read the weights;
  - ``attention``: the backend's ``prepare`` (per-step metadata) and ``forward`` of every
    layer (store the new K/V, attend over the paged cache);
  - ``model other``: the rest of the model's forward: embedding lookup, RMSNorms, rotary,
    SiLU and product, residual adds, the logits' cast to float32. The brief asked for three
    shares; lumping these into "engine" would blame the engine for model arithmetic;
  - ``engine``: everything else in ``Engine.step``: scheduling, building the rows and the
    ``ForwardBatch``, logit plugins, sampling, output processing and detokenising;

* ``MFU``: the matrix products' FLOPs (``2 * params_in_linears * B`` per step, LM head included;
  attention's own FLOPs are not counted) per second of the whole step, as a fraction of the
  peak measured in the same run with a large ``torch.mm`` in the same dtype and thread count;
  ``mm eff``: the same FLOPs per second of the matrix products alone (how well the GEMMs run);
* ``weights bw``: the linear weights' bytes, read once per step whatever B, per second of the
  step, as a fraction of the memory bandwidth measured in the same run (a large
  ``Tensor.copy_``, read + write counted). At batch 1 a decode step is bound by this read, so
  this column is how close the engine gets to the machine's limit there; at large B the step
  becomes compute-bound and MFU is the column to read. A matrix-vector product only reads,
  which one core may stream a little faster than it copies (and a large L3 may hold part of
  the weights between steps), so a value slightly above 100% means "at the limit".

How the step is split: wall-clock probes. Each ``nn.Linear``'s ``forward``, the model's
``forward`` and the backend's ``prepare`` and ``forward`` are wrapped (instance attributes,
removed afterwards) by a function that adds ``time.perf_counter()`` differences to a bucket.
On the CPU every torch op runs synchronously in the calling thread, so the wall-clock around a
module *is* its cost, threads included, with no device queue to hide work. The probes cost
about a microsecond each (~2 per module call), which the ``probe +`` column shows: the probed
steps' median against the plain steps' median (plain and probed steps alternate, so both see
the same background load). ``torch.profiler`` was the alternative: it records every aten op of
the step, the engine's small Python-driven ops included, so its overhead falls hardest on the
engine share that this benchmark exists to measure, and attributing aten ops back to modules
needs ``record_function`` ranges anyway. ``step ms`` and ``tok/s`` come from the plain steps;
the shares from the probed ones.

The model is a random-weight Qwen3 of ``--shape`` (``vibe-sgl-lite bench``'s shapes and
builder, ``vibe_sgl_lite/bench/shapes.py``): ``small`` (hidden 512, 8 layers, heads 8/4 of 64, FFN
1536, vocab 151936) or ``qwen3-0.6b`` (hidden 1024, 28 layers, heads 16/8 of 128, FFN 3072,
vocab 151936), embeddings tied to the LM head as in Qwen3-0.6B, built with transformers' classes
in a temporary folder; ``--hidden``, ``--layers``, ``--heads``, ``--kv-heads``, ``--head-dim``,
``--intermediate`` and ``--vocab`` override single sizes. Its tokenizer is the bundled model's
(4096 ids): the random model's other ids detokenise to nothing, which costs about what real
text costs (a few microseconds a token).

The baselines (skip them with ``--no-baselines``). The same decode step, at the same batch
sizes and context, in transformers (``model(next ids, cache=...)`` on equal-length rows,
its best case) and, when ``llama-cpp-python`` is installed, in llama.cpp (``LlamaCppEngine``,
one ``llama_decode`` over all sequences, on the model exported to an F32 GGUF with a float32 KV
cache), printed as decode tokens/s and our ratio. ``--plot PREFIX`` draws tokens/s against
batch size for the three engines (``PREFIX-tokens.png``) and our step time split into its four
shares (``PREFIX-breakdown.png``).

    python benchmarks/decode_step.py --threads 1 --plot docs/images/decode_step
    python benchmarks/decode_step.py --threads 1 --shape qwen3-0.6b --batches 1 8 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import random
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
import torch
from attention import memory_bandwidth
from torch import nn

from vibe_sgl_lite.bench.llama_cpp import NOT_INSTALLED, LlamaCppEngine, llama_cpp_installed
from vibe_sgl_lite.bench.report import BF16_CPU_FLAGS, cpu_bf16_flags
from vibe_sgl_lite.bench.shapes import SHAPE_FLAGS, SHAPES, Shape, random_qwen3, shape_of
from vibe_sgl_lite.bench.transformers_baseline import load_transformers_model
from vibe_sgl_lite.config import WEIGHT_LAYOUTS
from vibe_sgl_lite.core.engine import Engine
from vibe_sgl_lite.core.runner import ModelRunner
from vibe_sgl_lite.kernels import ATTENTION_BACKENDS
from vibe_sgl_lite.models.gguf_export import export_gguf
from vibe_sgl_lite.models.worker import ModelWorker
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.scheduler import Request

# ---- the model -------------------------------------------------------------------------------


def add_shape_flags(parser: argparse.ArgumentParser) -> None:
    """``--shape`` and one flag per size that overrides it (``--hidden``, ``--layers``,
    ``--heads``, ``--kv-heads``, ``--head-dim``, ``--intermediate``, ``--vocab``), as
    ``vibe-sgl-lite bench`` has them."""
    parser.add_argument("--shape", choices=list(SHAPES), default="small")
    for name in SHAPE_FLAGS:
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=int, default=None, help=f"override the shape's {name}")


def shape_from_args(args: argparse.Namespace) -> tuple[str, Shape]:
    """The shape's name (``resized`` once a size is overridden) and its sizes."""
    shape = shape_of(args)
    return (args.shape if shape == SHAPES[args.shape] else "resized"), shape


@contextmanager
def random_model(shape: Shape, *, max_positions: int) -> Iterator[Path]:
    """``random_qwen3`` (tied embeddings, bundled tokenizer, temporary folder), quietly."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Writing model shards" on stderr
    with random_qwen3(shape, max_positions=max_positions) as model_dir:
        yield model_dir


def linear_weights(model: nn.Module) -> tuple[int, int, int]:
    """Parameters of every ``nn.Linear`` (a tied LM head included: it is multiplied every step),
    of the LM head alone, and the bytes of the first: what one decode step reads."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    lm_head = getattr(model, "lm_head", None)
    return (
        sum(m.weight.numel() for m in linears),
        lm_head.weight.numel() if lm_head is not None else 0,
        sum(m.weight.numel() * m.weight.element_size() for m in linears),
    )


# ---- the machine -----------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU's model name from ``lscpu``, else what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or platform.machine()


def describe_bf16() -> str:
    """Whether the CPU multiplies bf16 natively (AVX512-BF16 dot products, AMX tiles), from the
    flags ``vibe-sgl-lite bench`` reads, and torch's CPU kernel level."""
    flags = cpu_bf16_flags()
    capability = f"torch CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if flags is None:
        return f"native bf16: unknown, no /proc/cpuinfo ({capability})"
    verdict = "yes" if flags else "no, torch emulates it through float32 (slower than float32)"
    detail = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in BF16_CPU_FLAGS)
    return f"native bf16: {verdict} ({detail}; {capability})"


def matmul_peak(dtype: torch.dtype, sizes: Sequence[int] = (1024, 2048), repeats: int = 5) -> float:
    """FLOP/s of the best square ``torch.mm`` of ``sizes`` in ``dtype``, at the current thread
    count: what this machine's GEMM library reaches, the ceiling for the model's matrix
    products. Best, not median, of ``repeats``: background load only ever slows it down."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        torch.mm(a, b)  # warm-up: first-use packing, thread pool start
        seconds = min(_seconds(lambda: torch.mm(a, b)) for _ in range(repeats))
        best = max(best, 2 * n**3 / seconds)
    return best


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class MachineLimits:
    cpu: str
    bf16: str  # describe_bf16()
    threads: int
    dtype: str
    matmul_peak: float  # FLOP/s of a large torch.mm in ``dtype``
    bandwidth: float  # bytes/s of a large copy, read + write

    @classmethod
    def measure(cls, dtype: str) -> MachineLimits:
        return cls(
            cpu=cpu_name(),
            bf16=describe_bf16(),
            threads=torch.get_num_threads(),
            dtype=dtype,
            matmul_peak=matmul_peak(getattr(torch, dtype)),
            bandwidth=memory_bandwidth(),
        )

    def report(self) -> list[str]:
        return [
            f"cpu: {self.cpu}; {self.bf16}",
            f"limits at {self.threads} thread(s): matmul peak {self.matmul_peak / 1e9:.0f} "
            f"GFLOP/s (best torch.mm up to 2048x2048, {self.dtype}); memory bandwidth "
            f"{self.bandwidth / 1e9:.1f} GB/s (256 MiB copy, read + write)",
        ]


# ---- probes ----------------------------------------------------------------------------------

BUCKETS = ("linear", "model", "attention_forward", "attention_prepare")


class Probes:
    """Wall-clock timers wrapped around the model's parts while ``installed``.

    ``seconds[bucket]`` accumulates: ``linear`` (every ``nn.Linear.forward``), ``model`` (the
    model's whole ``forward``, which contains the linears and the attention forwards),
    ``attention_forward`` and ``attention_prepare`` (the backend's two calls).
    """

    def __init__(self, engine: Engine) -> None:
        worker = engine.executor
        if not isinstance(worker, ModelWorker):
            raise ValueError("decode_step needs the in-process executor (tp_size = ep_size = 1)")
        self.model: nn.Module = worker.model
        self.targets: list[tuple[Any, str, str]] = [(worker.model, "forward", "model")]
        self.targets += [
            (m, "forward", "linear") for m in worker.model.modules() if isinstance(m, nn.Linear)
        ]
        self.targets += [
            (worker.attention, "forward", "attention_forward"),
            (worker.attention, "prepare", "attention_prepare"),
        ]
        self.seconds = dict.fromkeys(BUCKETS, 0.0)

    def _timed(self, original: Callable[..., Any], bucket: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[bucket] += time.perf_counter() - start

        return timed

    @contextmanager
    def installed(self) -> Iterator[dict[str, float]]:
        """Reset the buckets, wrap every target, yield the buckets; unwrap on the way out."""
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        saved = []
        for obj, name, bucket in self.targets:
            own = vars(obj).get(name)  # an instance attribute of that name, if any (normally none)
            saved.append((obj, name, own))
            setattr(obj, name, self._timed(getattr(obj, name), bucket))
        try:
            yield self.seconds
        finally:
            for obj, name, own in reversed(saved):
                if own is None:
                    delattr(obj, name)  # the class's method shows through again
                else:
                    setattr(obj, name, own)


# ---- one batch size --------------------------------------------------------------------------


@dataclass
class BatchResult:
    """One batch size: medians over the timed decode steps (seconds, FLOPs, bytes per step)."""

    batch: int
    context: int  # prompt tokens per request (the few tokens decoded since come on top)
    step_seconds: float  # plain steps
    probed_seconds: float  # probed steps
    matmul_seconds: float
    attention_seconds: float
    model_other_seconds: float
    engine_seconds: float
    matmul_flops: int
    weight_bytes: int

    @property
    def tokens_per_second(self) -> float:
        return self.batch / self.step_seconds

    @property
    def shares(self) -> dict[str, float]:
        """Matmul, attention, model other, engine: each bucket's median over their sum."""
        parts = {
            "matmul": self.matmul_seconds,
            "attention": self.attention_seconds,
            "model other": self.model_other_seconds,
            "engine": self.engine_seconds,
        }
        total = sum(parts.values())
        return {k: v / total for k, v in parts.items()}

    @property
    def probe_overhead(self) -> float:
        """How much slower the probed steps were than the plain ones (noise can make it < 0)."""
        return self.probed_seconds / self.step_seconds - 1

    def mfu(self, limits: MachineLimits) -> float:
        return self.matmul_flops / self.step_seconds / limits.matmul_peak

    def matmul_efficiency(self, limits: MachineLimits) -> float:
        return self.matmul_flops / self.matmul_seconds / limits.matmul_peak

    def weight_bandwidth(self, limits: MachineLimits) -> float:
        return self.weight_bytes / self.step_seconds / limits.bandwidth


def start_decoding(engine: Engine, batch: int, context: int, seed: int) -> list[Request]:
    """Add ``batch`` requests of ``context`` random prompt tokens and step the engine until each
    has its first token: from then on every step decodes all of them, one token each.

    The prefill takes several steps (``max_prefill_tokens`` per step), and requests prefilled
    early decode during the later ones, so when the timed steps begin the contexts differ by
    those few tokens. ``max_tokens`` is never reached: the caller aborts the requests."""
    rng = random.Random(seed)
    vocab = engine.model_config.vocab_size
    params = SamplingParams(temperature=0.0, max_tokens=engine.max_model_len, ignore_eos=True)
    requests = [
        engine.add_request([rng.randrange(1, vocab) for _ in range(context)], params)
        for _ in range(batch)
    ]
    while any(r.num_output_tokens == 0 for r in requests):
        engine.step()
    return requests


def decode_step(engine: Engine, batch: int) -> float:
    """Seconds of one ``Engine.step``, checked to have decoded ``batch`` rows and nothing else."""
    scheduler = engine.scheduler
    before = (scheduler.num_decode_tokens_computed, scheduler.num_prefill_tokens_computed)
    seconds = _seconds(engine.step)
    decoded = scheduler.num_decode_tokens_computed - before[0]
    prefilled = scheduler.num_prefill_tokens_computed - before[1]
    if decoded != batch or prefilled:
        raise RuntimeError(f"expected a pure decode of {batch} rows, got {decoded} + {prefilled}")
    return seconds


def measure_batch(
    engine: Engine, probes: Probes, batch: int, context: int, steps: int, warmup: int, seed: int
) -> BatchResult:
    """Time ``steps`` plain and ``steps`` probed decode steps, alternating, at ``batch`` rows."""
    requests = start_decoding(engine, batch, context, seed)
    try:
        for _ in range(warmup):  # first decode shapes: allocations, kernel choices
            decode_step(engine, batch)
        plain: list[float] = []
        probed: list[dict[str, float]] = []
        for _ in range(steps):
            plain.append(decode_step(engine, batch))
            with probes.installed() as seconds:
                total = decode_step(engine, batch)
            probed.append({"total": total, **seconds})
    finally:
        for req in requests:
            if not req.is_finished:
                engine.abort(req)  # pages back to the pool for the next batch size

    def median(f: Callable[[dict[str, float]], float]) -> float:
        return statistics.median(f(s) for s in probed)

    num_linear, _, weight_bytes = linear_weights(probes.model)
    return BatchResult(
        batch=batch,
        context=context,
        step_seconds=statistics.median(plain),
        probed_seconds=median(lambda s: s["total"]),
        matmul_seconds=median(lambda s: s["linear"]),
        attention_seconds=median(lambda s: s["attention_forward"] + s["attention_prepare"]),
        model_other_seconds=median(lambda s: s["model"] - s["linear"] - s["attention_forward"]),
        engine_seconds=median(lambda s: s["total"] - s["model"] - s["attention_prepare"]),
        matmul_flops=2 * num_linear * batch,
        weight_bytes=weight_bytes,
    )


# ---- the same step in transformers and llama.cpp ---------------------------------------------


def transformers_decode_seconds(
    model_dir: Path, dtype: str, batch: int, context: int, steps: int, seed: int
) -> float:
    """Median seconds of one transformers decode step of ``batch`` rows: ``context`` random
    prompt tokens each, prefilled in one forward (no padding: every row the same length,
    transformers' best case), then ``model(next ids [batch, 1], cache=...)`` plus the
    argmax, ``steps`` times after one warm-up step. Only the last position's logits are kept
    (``logits_to_keep=1``), as ``generate`` does."""
    hf = load_transformers_model(model_dir, dtype, torch.device("cpu"))
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, hf.config.vocab_size, (batch, context), generator=generator)
    times = []
    with torch.inference_mode():
        out = hf(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache, next_ids = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
        for _ in range(steps + 1):
            start = time.perf_counter()
            out = hf(input_ids=next_ids, cache=cache, use_cache=True, logits_to_keep=1)
            cache, next_ids = out.cache, out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def llama_cpp_decode_seconds(
    model_dir: Path, dtype: str, batches: Sequence[int], context: int, steps: int
) -> dict[int, float] | str:
    """Median seconds of one llama.cpp decode step per batch size (``LlamaCppEngine``: the model
    exported to a GGUF in ``dtype``, F32 for float32; its KV cache in float32 likewise), or why
    there is no llama.cpp column."""
    if not llama_cpp_installed():
        return NOT_INSTALLED
    storage = {"float32": "F32", "bfloat16": "BF16"}[dtype]
    kv_dtype = "float32" if dtype == "float32" else "float16"
    largest = max(batches)
    with tempfile.TemporaryDirectory(prefix="decode-step-gguf-") as tmp:
        gguf = export_gguf(model_dir, Path(tmp) / "model.gguf", storage)
        n_ctx = largest * (context + steps + 2)
        threads = torch.get_num_threads()
        with LlamaCppEngine(
            gguf, max_seqs=largest, n_ctx=n_ctx, threads=threads, kv_dtype=kv_dtype
        ) as llm:
            return {b: llm.decode_step_seconds(b, context, steps) for b in batches}


def baseline_table(report: DecodeStepReport) -> list[str]:
    """Decode tokens/s per batch size: ours, transformers', llama.cpp's, and our ratios."""
    lines = [
        f"{'batch':>5} {'ours tok/s':>11} {'transformers':>13} {'x':>6} {'llama.cpp':>10} {'x':>6}"
    ]
    for r in report.results:
        hf = r.batch / report.transformers[r.batch] if r.batch in report.transformers else None
        llama = r.batch / report.llama_cpp[r.batch] if r.batch in report.llama_cpp else None
        cells = [f"{r.batch:>5} {r.tokens_per_second:>11.1f}"]
        for theirs in (hf, llama):
            cells.append(
                f"{'-':>13} {'-':>6}"
                if theirs is None
                else f"{theirs:>13.1f} {r.tokens_per_second / theirs:>5.2f}x"
            )
        lines.append(" ".join(cells))
    return lines


def plot(report: DecodeStepReport, prefix: str) -> list[Path]:
    """Two PNGs: decode tokens/s against batch size for each engine (``PREFIX-tokens.png``),
    and our step time split into its four shares per batch size (``PREFIX-breakdown.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    batches = [r.batch for r in report.results]
    title = f"random Qwen3 {report.shape_name}, {report.dtype}, {report.limits.threads} thread(s)"
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(batches, [r.tokens_per_second for r in report.results], "o-", label="vibe-sgl-lite")
    for name, seconds in (("transformers", report.transformers), ("llama.cpp", report.llama_cpp)):
        if seconds:
            ax.plot(batches, [b / seconds[b] for b in batches], "s--", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(batches, [str(b) for b in batches])
    ax.set_xlabel("batch (sequences decoding at once)")
    ax.set_ylabel("decode tokens / s")
    ax.set_title(f"One decode step, {report.context}-token contexts\n{title}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    tokens_path = Path(f"{prefix}-tokens.png")
    fig.tight_layout()
    fig.savefig(tokens_path, dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    bottom = [0.0] * len(batches)
    for part in ("matmul", "attention", "model other", "engine"):
        ms = [r.shares[part] * r.step_seconds * 1e3 for r in report.results]
        ax.bar([str(b) for b in batches], ms, bottom=bottom, label=part)
        bottom = [a + b for a, b in zip(bottom, ms)]
    ax.set_xlabel("batch")
    ax.set_ylabel("ms per decode step")
    ax.set_title(f"Where one decode step goes\n{title}", fontsize=10)
    ax.legend()
    breakdown_path = Path(f"{prefix}-breakdown.png")
    fig.tight_layout()
    fig.savefig(breakdown_path, dpi=110)
    plt.close(fig)
    return [tokens_path, breakdown_path]


# ---- the whole run ---------------------------------------------------------------------------


@dataclass
class DecodeStepReport:
    limits: MachineLimits
    shape_name: str
    shape: Shape
    dtype: str
    backend: str
    linear_params: int
    lm_head_params: int
    context: int
    steps: int
    results: list[BatchResult]
    transformers: dict[int, float] = dataclasses.field(default_factory=dict)  # batch -> seconds
    llama_cpp: dict[int, float] = dataclasses.field(default_factory=dict)

    def header(self) -> list[str]:
        return [
            *self.limits.report(),
            f"model: random Qwen3 {self.shape_name} ({self.shape.describe()}), {self.dtype}; "
            f"{self.linear_params / 1e6:.1f}M weights in matrix products "
            f"(LM head {self.lm_head_params / 1e6:.1f}M); attention backend {self.backend}",
            f"workload: {self.context} prompt tokens per request prefilled, greedy; medians of "
            f"{self.steps} plain steps and {self.steps} probed steps, alternating",
        ]

    def table(self) -> list[str]:
        lines = [TABLE_HEADER]
        lines += [format_row(r, self.limits) for r in self.results]
        return lines


TABLE_HEADER = (
    f"{'batch':>5} {'step ms':>9} {'tok/s':>9} {'matmul':>7} {'attn':>7} {'model':>7} "
    f"{'engine':>7} {'MFU':>7} {'mm eff':>7} {'weights':>8} {'probe':>7}\n"
    f"{'':>5} {'':>9} {'':>9} {'':>7} {'':>7} {'other':>7} {'':>7} {'':>7} {'':>7} "
    f"{'bw':>8} {'+':>7}"
)


def format_row(r: BatchResult, limits: MachineLimits) -> str:
    s = r.shares
    return (
        f"{r.batch:>5} {r.step_seconds * 1e3:>9.2f} {r.tokens_per_second:>9.1f} "
        f"{s['matmul']:>7.1%} {s['attention']:>7.1%} {s['model other']:>7.1%} "
        f"{s['engine']:>7.1%} {r.mfu(limits):>7.1%} {r.matmul_efficiency(limits):>7.1%} "
        f"{r.weight_bandwidth(limits):>8.1%} {r.probe_overhead:>+7.1%}"
    )


MAX_PREFILL_TOKENS = 8192  # EngineConfig's default


def run(args: argparse.Namespace) -> DecodeStepReport:
    """Measure the machine, build the model, then each batch size in turn on one engine."""
    shape_name, shape = shape_from_args(args)
    limits = MachineLimits.measure(args.dtype)
    for line in limits.report():
        print(line, flush=True)
    # Pool: every request's prompt, the tokens decoded during the prefill steps and the timed
    # steps, and a partly filled last page.
    largest = max(args.batches)
    prefill_steps = -(-largest * args.context // MAX_PREFILL_TOKENS) + 1
    per_request = args.context + prefill_steps + args.warmup + 2 * args.steps + 1
    pool_tokens = largest * (per_request + args.page_size)
    settings = dict(
        max_prefill_tokens=MAX_PREFILL_TOKENS,
        dtype=args.dtype,
        page_size=args.page_size,
        max_total_tokens=pool_tokens,
        max_running_requests=max(256, largest),
        enable_prefix_cache=False,  # random prompts share nothing; no tree to walk
        attention_backend=args.backend,
        weight_layout=args.weight_layout,
        # the engine sets its own thread count (EngineConfig.num_threads): pass --threads on,
        # or a machine's load average would choose it
        num_threads=torch.get_num_threads(),
    )
    with random_model(shape, max_positions=max(4096, per_request)) as model_dir:
        with ModelRunner(model_dir, **settings) as runner:
            engine = runner.engine
            assert engine is not None
            probes = Probes(engine)
            num_linear, num_lm_head, _ = linear_weights(probes.model)
            report = DecodeStepReport(
                limits=limits,
                shape_name=shape_name,
                shape=shape,
                dtype=args.dtype,
                backend=type(engine.attention).__name__,
                linear_params=num_linear,
                lm_head_params=num_lm_head,
                context=args.context,
                steps=args.steps,
                results=[],
            )
            for line in report.header()[2:] + [TABLE_HEADER]:
                print(line, flush=True)
            for i, batch in enumerate(args.batches):
                result = measure_batch(
                    engine, probes, batch, args.context, args.steps, args.warmup, seed=i
                )
                report.results.append(result)
                print(format_row(result, limits), flush=True)
        if args.baselines:
            run_baselines(report, model_dir, args)
    return report


def run_baselines(report: DecodeStepReport, model_dir: Path, args: argparse.Namespace) -> None:
    """The same decode steps in transformers and llama.cpp, then the comparison table."""
    for i, batch in enumerate(args.batches):
        report.transformers[batch] = transformers_decode_seconds(
            model_dir, args.dtype, batch, args.context, args.steps, seed=i
        )
    llama = llama_cpp_decode_seconds(model_dir, args.dtype, args.batches, args.context, args.steps)
    if isinstance(llama, str):
        print(f"llama.cpp: {llama}")
    else:
        report.llama_cpp = llama
    for line in baseline_table(report):
        print(line, flush=True)


def main(argv: list[str] | None = None) -> DecodeStepReport:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64, 128])
    parser.add_argument("--context", type=int, default=256, help="prompt tokens per request")
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=2, help="decode steps before timing")
    add_shape_flags(parser)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument(
        "--backend", default="auto", choices=["auto", *ATTENTION_BACKENDS], help="attention"
    )
    parser.add_argument(
        "--no-baselines",
        dest="baselines",
        action="store_false",
        help="skip the transformers and llama.cpp decode steps",
    )
    parser.add_argument("--plot", metavar="PREFIX", help="write PREFIX-tokens.png, -breakdown.png")
    parser.add_argument(
        "--weight-layout", default="auto", choices=WEIGHT_LAYOUTS, help="linear weights in memory"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
    )
    args = parser.parse_args(argv)
    for name in ("context", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if min(args.batches) < 1:
        parser.error("--batches must be >= 1")
    common.apply_threads(args)
    start = time.perf_counter()
    report = run(args)
    if args.plot:
        for path in plot(report, args.plot):
            print(f"wrote {path}")
    print(f"total {time.perf_counter() - start:.1f} s")
    return report


if __name__ == "__main__":
    main()
