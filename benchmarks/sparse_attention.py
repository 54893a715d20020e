"""Sparse decode attention and the int8 KV cache: how much KV each reads, what each costs in quality.

Every configuration runs the same requests on the *decode* path, where the attention methods act
(prefill is always dense): several windows of held-out text (by default Twelfth Night, the play
the bundled tiny-shakespeare model never saw), each a prompt of ``--context`` tokens followed by
``--eval-tokens`` more tokens of the same text, batched in one ``generate_outputs`` call.

Teacher forcing (``TeacherForcing``, a runner plugin): at every sampling step the plugin records
``log_softmax`` of the logits it receives (float32, the whole vocabulary), then masks every
logit but the next held-out token's, so greedy decoding emits the text itself and every step
conditions on the true prefix. The first generated token comes from the prefill (dense for every
method): it is forced but not scored, so the ``--eval-tokens`` scored positions are all decode
steps, with contexts from ``context + 1`` to ``context + eval_tokens`` keys.

Per configuration (``run_benchmark`` returns them as ``Result`` rows; ``main`` prints them):

* KV read fraction: ``get_stats()["attention_kv_read_fraction"]``, the keys the decode steps
  read over the keys a dense read touches (summed over layers and KV heads);
* perplexity: ``exp`` of the mean negative log-likelihood of the forced (held-out) tokens;
* mean KL: ``KL(dense || method)`` of the next-token distributions, averaged over every scored
  position; the reference is the dense run with the full-precision cache (its own KL is 0);
* seconds: wall time of the teacher-forced ``generate_outputs`` call (prefill + decode), the
  best of ``--repeats`` runs (a shared CPU's bursts of other work only ever add time).

Configurations: dense; streaming (``num_sink_tokens=4``, windows sized so that sinks + window
are 1/8, 1/4 and 1/2 of the mean decode context ``context + eval_tokens / 2``); quest (pages of
16 tokens) and topk_oracle at ``selection_ratio`` 0.125, 0.25, 0.5; and an int8 KV cache with
dense attention, for which it also reports the pool's bytes per token against the
full-precision cache's (``KVPool.bytes_per_token``) and the greedy-token agreement with the
full-precision cache on free generation from the same prompts.

Read perplexity with KL beside it: the bundled model was trained on 256-token windows, so at the
default 512-token prompts dense attention runs past its training length, and a method that drops
distant keys can score a *lower* perplexity than dense. KL against dense measures faithfulness
to the model; perplexity alone would reward the truncation. The seconds are a CPU wall time of
a 4M-parameter model: the sparse paths gather their keys in torch (dense decode uses the C++
kernel), so reading less KV does not make them faster here.

    python benchmarks/sparse_attention.py --threads 2 --plot docs/images/sparse_attention.png
    python benchmarks/sparse_attention.py --model path/to/hf-model --text some.txt
"""

from __future__ import annotations

import argparse
import math
import platform
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common
import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.core.runner import default_model_path
from vibe_sgl_lite.memory import KVPool
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

RATIOS = (0.125, 0.25, 0.5)
NUM_SINK_TOKENS = 4
PAGE_SIZE = 16


# ---- what runs --------------------------------------------------------------------------------


@dataclass
class Config:
    """One row of the table: a label and the ``ModelRunner`` settings that make it."""

    method: str
    options: str
    settings: dict[str, Any] = field(default_factory=dict)


@dataclass
class Result:
    method: str
    options: str
    kv_read_fraction: float
    perplexity: float
    mean_kl: float
    seconds: float
    kv_bytes_ratio: float | None = None  # int8 only: bytes per token against full precision
    greedy_agreement: float | None = None  # int8 only: same greedy token, position by position
    greedy_prefix: float | None = None  # int8 only: mean tokens identical before a divergence


def configurations(context: int, eval_tokens: int) -> list[Config]:
    """Dense first (the reference), then every sparse method at three budgets, then int8 KV."""
    mean_len = context + eval_tokens / 2  # keys a decode step sees, on average
    configs = [Config("dense", "full-precision KV (reference)", {"attention_method": "dense"})]
    for ratio in RATIOS:
        window = max(1, round(ratio * mean_len) - NUM_SINK_TOKENS)
        configs.append(
            Config(
                "streaming",
                f"sinks {NUM_SINK_TOKENS}, window {window}",
                {
                    "attention_method": "streaming",
                    "num_sink_tokens": NUM_SINK_TOKENS,
                    "attention_window": window,
                },
            )
        )
    for method in ("quest", "topk_oracle"):
        for ratio in RATIOS:
            options = f"ratio {ratio}" + (f", page {PAGE_SIZE}" if method == "quest" else "")
            configs.append(
                Config(method, options, {"attention_method": method, "selection_ratio": ratio})
            )
    configs.append(Config("int8 kv", "dense", {"kv_cache_dtype": "int8"}))
    return configs


def heldout_windows(
    tokens: Sequence[int], context: int, eval_tokens: int, windows: int
) -> list[list[int]]:
    """``windows`` slices of ``context + eval_tokens + 1`` tokens, spread evenly over ``tokens``."""
    span = context + eval_tokens + 1
    if len(tokens) < span:
        raise ValueError(f"the held-out text has {len(tokens)} tokens, fewer than {span} needed")
    last = len(tokens) - span
    starts = [round(i * last / max(1, windows - 1)) for i in range(windows)]
    return [list(tokens[s : s + span]) for s in starts]


# ---- teacher forcing ----------------------------------------------------------------------


class TeacherForcing(Plugin):
    """Records each step's log-probabilities, then forces the next held-out token.

    ``expect(windows, context)`` arms it: a request whose prompt is ``window[:context]`` is then
    forced to generate ``window[context:]``, and its decode steps' ``log_softmax`` rows are kept
    (``take`` returns them). Unarmed, it applies to no request (free generation runs untouched).
    """

    name = "teacher_forcing"

    def __init__(self) -> None:
        self._targets: dict[tuple[int, ...], int] = {}  # prompt -> window index
        self._windows: list[list[int]] = []
        self._context = 0
        self._logprobs: list[torch.Tensor] = []  # per window: [eval_tokens, vocab]
        self._window_of: dict[int, int] = {}  # request id -> window index

    def expect(self, windows: list[list[int]], context: int) -> None:
        self._windows, self._context = windows, context
        self._targets = {tuple(w[:context]): i for i, w in enumerate(windows)}
        if len(self._targets) != len(windows):
            raise ValueError("two held-out windows have the same prompt")
        self._logprobs = []

    def take(self) -> torch.Tensor:
        """The recorded log-probabilities ``[windows, eval_tokens, vocab]``; disarms."""
        out = torch.stack(self._logprobs) if self._logprobs else torch.empty(0)
        if len(self._logprobs) != len(self._windows) or out.isnan().any():
            raise RuntimeError("teacher forcing: some positions were never scored")
        self._targets, self._windows, self._logprobs = {}, [], []
        return out

    def applies(self, params: SamplingParams) -> bool:
        return bool(self._targets)

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if not self._logprobs:  # the vocabulary is the logits' width
            eval_tokens = len(self._windows[0]) - self._context - 1
            shape = (eval_tokens, logits.shape[-1])
            self._logprobs = [torch.full(shape, math.nan) for _ in self._windows]
        forced = torch.full_like(logits, float("-inf"))
        for i, row in enumerate(rows):
            w = self._window_of.get(row.request_id)
            if w is None:
                w = self._window_of[row.request_id] = self._targets[tuple(row.prompt_ids)]
            n = len(row.output_ids)  # tokens generated so far; 0: this row is the prefill's
            if n > 0:
                self._logprobs[w][n - 1] = logprobs[i]
            forced[i, self._windows[w][self._context + n]] = 0.0
        return forced

    def release(self, request_id: int) -> None:
        self._window_of.pop(request_id, None)


def teacher_forced(
    runner: ModelRunner, plugin: TeacherForcing, windows: list[list[int]], context: int
) -> tuple[torch.Tensor, float]:
    """Log-probabilities ``[windows, eval_tokens, vocab]`` of every decode step, and seconds."""
    eval_tokens = len(windows[0]) - context - 1
    plugin.expect(windows, context)
    params = SamplingParams(temperature=0, max_tokens=eval_tokens + 1, ignore_eos=True)
    start = time.perf_counter()
    outputs = runner.generate_outputs([w[:context] for w in windows], params)
    seconds = time.perf_counter() - start
    for out, w in zip(outputs, windows):
        if out.token_ids != w[context:]:
            raise RuntimeError(f"teacher forcing failed: {out.finish_reason} {out.error}")
    return plugin.take(), seconds


def greedy(runner: ModelRunner, prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    return [o.token_ids for o in runner.generate_outputs(prompts, params)]


def agreement(reference: list[list[int]], other: list[list[int]]) -> tuple[float, float]:
    """Share of positions with the same token, and mean length of the identical prefix."""
    same = total = prefix = 0
    for a, b in zip(reference, other):
        matches = [x == y for x, y in zip(a, b)]
        same += sum(matches)
        total += len(matches)
        prefix += matches.index(False) if False in matches else len(matches)
    return same / total, prefix / len(reference)


# ---- the measurement ------------------------------------------------------------------------


def run_benchmark(
    model: str | Path | None = None,
    *,
    text: str | Path | None = None,
    context: int = 512,
    eval_tokens: int = 256,
    windows: int = 4,
    dtype: str = "float32",
    repeats: int = 2,
    configs: Sequence[Config] | None = None,
    progress: bool = False,
) -> list[Result]:
    """Run every configuration (dense first: the reference) and return one ``Result`` each."""
    text_path = Path(text) if text is not None else default_model_path() / "heldout.txt"
    configs = list(configs) if configs is not None else configurations(context, eval_tokens)
    first = configs[0].settings
    if first.get("attention_method", "dense") != "dense" or first.get("kv_cache_dtype") == "int8":
        raise ValueError("the first configuration is the reference: dense, full-precision cache")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    span = context + eval_tokens + 1
    pool_tokens = windows * -(-span // PAGE_SIZE) * PAGE_SIZE
    base: dict[str, Any] = dict(
        dtype=dtype, page_size=PAGE_SIZE, max_total_tokens=pool_tokens, enable_prefix_cache=False
    )
    # The windows, and a warm-up (not timed) so that no row pays the kernels' first-use costs.
    with ModelRunner(model, **base, attention_method="quest", selection_ratio=0.5) as runner:
        limit = int(runner.get_stats()["max_model_len"])
        if span > limit:
            raise ValueError(f"context + eval_tokens + 1 = {span} exceeds the model's {limit}")
        heldout = text_path.read_text()  # verbose=False: no "longer than max length" warning
        tokens = runner.tokenizer.hf.encode(heldout, add_special_tokens=False, verbose=False)
        chunks = heldout_windows(tokens, context, eval_tokens, windows)
        prompts = [w[:context] for w in chunks]
        greedy(runner, prompts, 4)
    targets = torch.tensor([w[context + 1 :] for w in chunks])  # the scored tokens
    plugin = TeacherForcing()
    results: list[Result] = []
    reference: torch.Tensor | None = None
    reference_greedy: list[list[int]] = []
    full_bytes = 0
    for config in configs:
        with ModelRunner(model, plugins=[plugin], **base, **config.settings) as runner:
            times = []
            for _ in range(repeats):  # the same requests again: only the time differs
                logprobs, elapsed = teacher_forced(runner, plugin, chunks, context)
                times.append(elapsed)
            seconds = min(times)
            fraction = float(runner.get_stats()["attention_kv_read_fraction"])
            engine = runner.engine
            assert engine is not None
            mc, cfg = engine.model_config, engine.config
            pool_bytes = KVPool.bytes_per_token(
                mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, cfg.kv_torch_dtype
            )
            if reference is None:
                reference, full_bytes = logprobs, pool_bytes
                reference_greedy = greedy(runner, prompts, eval_tokens)
            nll = -logprobs.gather(-1, targets[..., None]).squeeze(-1)
            p = reference.exp()  # where p is 0 the term is 0, even against -inf
            kl = torch.where(p > 0, p * (reference - logprobs), 0.0).sum(-1)
            result = Result(
                config.method,
                config.options,
                fraction,
                math.exp(float(nll.double().mean())),
                float(kl.double().mean()),
                seconds,
            )
            if cfg.kv_cache_dtype == "int8":
                result.kv_bytes_ratio = pool_bytes / full_bytes
                result.greedy_agreement, result.greedy_prefix = agreement(
                    reference_greedy, greedy(runner, prompts, eval_tokens)
                )
            results.append(result)
            if progress:
                print(f"  {config.method} ({config.options}): {seconds:.1f} s", flush=True)
    return results


# ---- reporting ---------------------------------------------------------------------------


def hardware() -> str:
    """The CPU's model name (``lscpu``), else what ``platform`` knows."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        out = ""
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def format_table(results: Sequence[Result]) -> str:
    lines = [
        f"{'method':<12} {'options':<31} {'KV read':>8} {'perplexity':>11} {'mean KL':>10}"
        f" {'seconds':>8}"
    ]
    for r in results:
        lines.append(
            f"{r.method:<12} {r.options:<31} {r.kv_read_fraction:>8.3f} {r.perplexity:>11.3f} "
            f"{r.mean_kl:>10.2e} {r.seconds:>8.2f}"
        )
    for r in results:
        if r.kv_bytes_ratio is not None:
            lines.append(
                f"{r.method}: {r.kv_bytes_ratio:.3f}x the full-precision cache's bytes per token; "
                f"free greedy generation agrees with full precision on "
                f"{r.greedy_agreement:.1%} of positions, identical for the first "
                f"{r.greedy_prefix:.1f} tokens on average"
            )
    return "\n".join(lines)


def plot(results: Sequence[Result], path: str | Path, title: str) -> None:
    """KV read fraction against mean KL (log scale) and against perplexity, one series each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense = next(r for r in results if r.method == "dense")
    fig, (ax_kl, ax_ppl) = plt.subplots(1, 2, figsize=(11, 4.2))
    methods = list(dict.fromkeys(r.method for r in results if r.method != "dense"))
    for method in methods:
        rows = sorted((r for r in results if r.method == method), key=lambda r: r.kv_read_fraction)
        xs = [r.kv_read_fraction for r in rows]
        marker = "*" if method == "int8 kv" else "o"
        size = 12 if method == "int8 kv" else 6
        ax_kl.plot(xs, [r.mean_kl for r in rows], marker=marker, markersize=size, label=method)
        ax_ppl.plot(xs, [r.perplexity for r in rows], marker=marker, markersize=size, label=method)
    ax_kl.set_yscale("log")
    ax_kl.set_ylabel("mean KL(dense || method), nats")
    ax_ppl.axhline(dense.perplexity, color="gray", linestyle="--", label="dense")
    ax_ppl.set_ylabel("perplexity of the held-out tokens")
    for ax in (ax_kl, ax_ppl):
        ax.set_xlabel("fraction of the KV read by decode")
        ax.set_xlim(0, 1.05)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="HF model folder (default: tiny-shakespeare)")
    parser.add_argument("--text", default=None, help="held-out text (default: the model's)")
    parser.add_argument("--context", type=int, default=512, help="prompt tokens per window")
    parser.add_argument("--eval-tokens", type=int, default=256, help="decode tokens scored")
    parser.add_argument("--windows", type=int, default=4, help="held-out windows (requests)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=2, help="timed runs; the best is shown")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores")
    parser.add_argument("--plot", default=None, help="write a PNG of the results here")
    args = parser.parse_args(argv)
    common.apply_threads(args)
    model_name = Path(args.model).name if args.model else default_model_path().name
    print(
        f"model {model_name} ({args.dtype}), {args.windows} windows x ({args.context} prompt + "
        f"{args.eval_tokens} scored decode tokens), page {PAGE_SIZE}, "
        f"seconds: best of {args.repeats}\n"
        f"hardware: {hardware()}, {torch.get_num_threads()} threads",
        flush=True,
    )
    start = time.perf_counter()
    results = run_benchmark(
        args.model,
        text=args.text,
        context=args.context,
        eval_tokens=args.eval_tokens,
        windows=args.windows,
        dtype=args.dtype,
        repeats=args.repeats,
        progress=True,
    )
    print(format_table(results))
    print(f"total {time.perf_counter() - start:.1f} s")
    if args.plot:
        title = (
            f"{model_name}: {args.windows} x {args.eval_tokens} decode tokens after "
            f"{args.context}-token prompts"
        )
        plot(results, args.plot, title)
        print(f"plot: {args.plot}")
    return results


if __name__ == "__main__":
    main()
