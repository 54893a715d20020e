"""``vibe-sgl-lite bench``: batched generation throughput against transformers' ``generate``.

Both engines run in this process, on the same weights and the same prompts: ``--num-prompts``
prompts of random token ids (``--prompt-len`` tokens, or lengths uniform in
``[prompt-len/8, prompt-len]`` with ``--mixed-lengths``), ``--output-len`` new tokens each,
greedy with EOS ignored. The report gives each engine's tokens/s, the ratio, and how many of
the greedy outputs are identical token for token (the check that the speed is not bought with
wrong answers).

The model is ``--model DIR`` or, by default, a random-weight Qwen3 built with transformers' own
classes in a temporary folder. It lives in the package, not in the repository's
``benchmarks/`` folder, so an installed ``vibe-sgl-lite`` can measure itself;
``benchmarks/throughput.py`` is this command under its old name.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vibe_sgl_lite.cli.flags import add_dataclass_flags
from vibe_sgl_lite.config import DTYPES, EngineConfig
from vibe_sgl_lite.core.runner import ModelRunner, default_model_path
from vibe_sgl_lite.sampling import SamplingParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
"""The bundled model's tokenizer, copied into the random model: the package cannot use the
test suite's tokenizer factory, and prompts are random ids anyway (the tokenizer only turns the
outputs into text)."""

RANDOM_MODEL_MAX_POSITIONS = 4096


def add_bench_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """The workload, random-model and engine flags; returns the engine flags' destinations."""
    parser.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=None,
        help="Hugging Face model folder (default: a random-weight Qwen3 of --hidden, --layers "
        "and --vocab, built in a temporary folder)",
    )
    parser.add_argument("--num-prompts", type=int, default=32, help="prompts in the batch")
    parser.add_argument(
        "--prompt-len", type=int, default=64, help="tokens per prompt (the longest one)"
    )
    parser.add_argument(
        "--mixed-lengths",
        action="store_true",
        help="prompt lengths uniform in [prompt-len/8, prompt-len] (transformers left-pads)",
    )
    parser.add_argument("--output-len", type=int, default=64, help="new tokens per prompt")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
    )
    random_model = parser.add_argument_group("random model (ignored with --model)")
    random_model.add_argument(
        "--hidden", type=int, default=512, help="hidden size: a head per 64, a KV head per 256"
    )
    random_model.add_argument("--layers", type=int, default=8, help="decoder layers")
    random_model.add_argument("--vocab", type=int, default=8192, help="vocabulary size")
    # A pool sized for the workload, not mem_fraction of free memory: on a CPU that would be
    # a share of the machine's RAM, reserved up front for a few thousand tokens.
    return add_dataclass_flags(
        parser.add_argument_group(
            "engine settings (vibe-sgl-lite's; --dtype and --device for both)"
        ),
        EngineConfig,
        defaults={"max_total_tokens": 65536},
    )


def check_bench_flags(args: argparse.Namespace) -> None:
    """``ValueError`` for sizes that cannot work, before anything is built or loaded."""
    for name in ("num_prompts", "prompt_len", "output_len", "hidden", "layers", "vocab"):
        if getattr(args, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0:
        raise ValueError(f"threads must be >= 0, got {args.threads}")
    if args.model_path is not None and not Path(args.model_path).is_dir():
        raise ValueError(f"--model must be a Hugging Face model folder, got {args.model_path}")


def build_random_qwen3(
    out_dir: Path, *, hidden: int, layers: int, vocab: int, max_positions: int
) -> Path:
    """A random Qwen3 with ``hidden // 64`` heads of 64 and one KV head per 256 hidden.

    Writes the model (seed 0, EOS id 0) with the bundled tokenizer to ``out_dir / "model"`` and
    returns that folder.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        head_dim=64,
        max_position_embeddings=max_positions,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model_dir = out_dir / "model"
    Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
    for name in TOKENIZER_FILES:
        (model_dir / name).write_bytes((default_model_path() / name).read_bytes())
    return model_dir


@contextmanager
def random_qwen3(*, hidden: int, layers: int, vocab: int, max_positions: int) -> Iterator[Path]:
    """``build_random_qwen3`` in a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory() as tmp:
        yield build_random_qwen3(
            Path(tmp), hidden=hidden, layers=layers, vocab=vocab, max_positions=max_positions
        )


@dataclass
class Workload:
    """Prompts as transformers' batched ``generate`` takes them, left-padded with id 0."""

    prompts: torch.Tensor  # [num_prompts, prompt_len]
    mask: torch.Tensor  # 1 where a row's prompt is, 0 on its padding
    lengths: list[int]

    @classmethod
    def random(cls, num_prompts: int, prompt_len: int, vocab: int, mixed: bool) -> Workload:
        """Random ids in ``[1, vocab)`` (seed 0), so both engines see the same prompts."""
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, vocab, (num_prompts, prompt_len), generator=g)
        lengths = [prompt_len] * num_prompts
        if mixed:
            low = max(1, prompt_len // 8)
            lengths = torch.randint(low, prompt_len + 1, (num_prompts,), generator=g).tolist()
        mask = torch.zeros_like(prompts)
        for i, n in enumerate(lengths):
            mask[i, prompt_len - n :] = 1
        return cls(prompts * mask, mask, lengths)

    def rows(self) -> list[list[int]]:
        """Each prompt without its padding: what our engine is given."""
        width = self.prompts.shape[1]
        return [self.prompts[i, width - n :].tolist() for i, n in enumerate(self.lengths)]


@dataclass
class ThroughputResult:
    model: str
    num_params: int
    config: EngineConfig
    threads: int
    lengths: list[int]
    output_len: int
    hf_seconds: float
    ours_seconds: float
    identical: int

    def report(self) -> list[str]:
        """The lines ``benchmarks/throughput.py`` has always printed (the README quotes them)."""
        total = len(self.lengths) * self.output_len
        device = "" if self.config.device == "cpu" else f", {self.config.device}"
        hf_rate, ours_rate = total / self.hf_seconds, total / self.ours_seconds
        return [
            f"model: {self.model} {self.num_params / 1e6:.1f}M params, {self.config.dtype}"
            f"{device}, threads={self.threads}",
            f"workload: {len(self.lengths)} prompts x {min(self.lengths)}..{max(self.lengths)} "
            f"tokens -> {self.output_len} new tokens each",
            f"transformers generate: {self.hf_seconds:7.2f} s  {hf_rate:8.1f} tok/s",
            f"vibe-sgl-lite:         {self.ours_seconds:7.2f} s  {ours_rate:8.1f} tok/s",
            f"speedup: {self.hf_seconds / self.ours_seconds:.2f}x   "
            f"identical greedy outputs: {self.identical}/{len(self.lengths)}",
        ]


def run_bench(args: argparse.Namespace, config: EngineConfig) -> ThroughputResult:
    """Build or take the model, then ``measure_throughput`` with the flags' workload."""
    check_bench_flags(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes: dict[str, Any] = dict(
        num_prompts=args.num_prompts,
        prompt_len=args.prompt_len,
        output_len=args.output_len,
        mixed_lengths=args.mixed_lengths,
    )
    if args.model_path is not None:
        model_dir = Path(args.model_path)
        return measure_throughput(model_dir, config, name=model_dir.name, **sizes)
    positions = max(RANDOM_MODEL_MAX_POSITIONS, args.prompt_len + args.output_len)
    with random_qwen3(
        hidden=args.hidden, layers=args.layers, vocab=args.vocab, max_positions=positions
    ) as model_dir:
        return measure_throughput(model_dir, config, name="Qwen3", **sizes)


def measure_throughput(
    model_dir: Path,
    config: EngineConfig,
    *,
    name: str,
    num_prompts: int,
    prompt_len: int,
    output_len: int,
    mixed_lengths: bool = False,
) -> ThroughputResult:
    """Time transformers' ``generate``, then our engine, on one workload; one model at a time
    in memory. Each engine gets a small warm-up first (first-call allocations, kernel picks)."""
    from transformers import AutoModelForCausalLM

    device = torch.device(config.device)
    hf: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=DTYPES[config.dtype])
    hf = hf.to(device).eval()
    max_positions = getattr(hf.config, "max_position_embeddings", None)
    if max_positions is not None and prompt_len + output_len > max_positions:
        raise ValueError(
            f"prompt_len + output_len = {prompt_len + output_len} exceeds the model's "
            f"{max_positions} positions"
        )
    work = Workload.random(num_prompts, prompt_len, hf.config.vocab_size, mixed_lengths)
    prompts, mask = work.prompts.to(device), work.mask.to(device)
    num_params = sum(p.numel() for p in hf.parameters())
    with torch.no_grad():
        warm = prompts[:2, :8]
        hf.generate(
            warm,
            attention_mask=torch.ones_like(warm),
            max_new_tokens=2,
            do_sample=False,
            pad_token_id=0,
        )
        _synchronize(device)
        t0 = time.perf_counter()
        hf_out = hf.generate(
            prompts,
            attention_mask=mask,
            max_new_tokens=output_len,
            min_new_tokens=output_len,
            do_sample=False,
            pad_token_id=0,
        )
        _synchronize(device)
        hf_seconds = time.perf_counter() - t0
    hf_ids = hf_out[:, prompt_len:].tolist()
    del hf, hf_out
    if device.type == "cuda":
        torch.cuda.empty_cache()  # our KV pool is sized from free memory

    params = SamplingParams(temperature=0, max_tokens=output_len, ignore_eos=True)
    with ModelRunner(model_dir, **dataclasses.asdict(config)) as runner:
        runner.generate_outputs([work.prompts[0, :8].tolist()], params)
        t0 = time.perf_counter()
        outs = runner.generate_outputs(work.rows(), params)
        ours_seconds = time.perf_counter() - t0
    errors = [o.error for o in outs if o.error is not None]
    if errors:
        raise ValueError(errors[0])
    return ThroughputResult(
        model=name,
        num_params=num_params,
        config=config,
        threads=torch.get_num_threads(),
        lengths=work.lengths,
        output_len=output_len,
        hf_seconds=hf_seconds,
        ours_seconds=ours_seconds,
        identical=sum(o.token_ids == ids for o, ids in zip(outs, hf_ids)),
    )


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer reads when the work ends, not when it was queued."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
