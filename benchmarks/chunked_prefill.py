"""Chunked prefill: how long do decoding requests stall when a long prompt arrives?

Builds a random-weight Qwen3 in a temporary folder. ``--num-decoders`` requests start decoding;
once each has produced a few tokens, one ``--prompt-len``-token prompt arrives. The script drives
``Engine.step()`` directly and, after every step, records ``time.perf_counter()`` for each decoding
request whose output grew. It does this twice, in the same run:

* ``chunked_prefill_size=None``: the whole prompt is prefilled in one step, and every decoding
  request waits for that step;
* ``chunked_prefill_size=--chunk`` (and ``max_prefill_tokens`` equal to it): the prompt is
  prefilled ``--chunk`` tokens per step, each step also carrying one decode token of every
  running request (a Sarathi-style mixed batch).

It prints the largest gap between two consecutive output tokens of the decoding requests, the
typical (median) gap, and the step times of the steps that carried the long prompt, so one can
see the largest gap is one chunk's step, not the whole prompt's.

    python benchmarks/chunked_prefill.py                    # 16 decoders, 8192-token prompt
    python benchmarks/chunked_prefill.py --prompt-len 2048  # quicker
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.model_factory


def build_model(out: Path, hidden: int, layers: int, vocab: int, max_positions: int) -> Path:
    """A random Qwen3 with ``hidden // 64`` heads of 64 and one KV head per 256 hidden."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.model_factory import build_tokenizer

    tok_dir = build_tokenizer(out / "tok")
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
    model_dir = out / "model"
    Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
    for f in tok_dir.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    return model_dir


@dataclass
class Trace:
    """What one run recorded."""

    arrivals: list[list[float]] = field(default_factory=list)  # per decoder, after the long prompt
    long_prompt_steps: list[tuple[int, float]] = field(default_factory=list)  # (tokens, seconds)
    decode_only_steps: list[float] = field(default_factory=list)
    prefill_done: float = 0.0  # seconds from the long prompt's arrival to its first token

    def gaps(self) -> list[float]:
        return [b - a for times in self.arrivals for a, b in zip(times, times[1:])]


def run(model_dir: Path, args: argparse.Namespace, chunk: int | None) -> Trace:
    from vibe_sgl_lite import ModelRunner, SamplingParams
    from vibe_sgl_lite.scheduler import ScheduledBatch

    g = torch.Generator().manual_seed(0)
    short = torch.randint(1, args.vocab, (args.num_decoders, args.decoder_prompt_len), generator=g)
    long_prompt = torch.randint(1, args.vocab, (args.prompt_len,), generator=g).tolist()
    # Decoders keep going well past the long prompt's prefill, however many chunks it takes.
    chunks = -(-args.prompt_len // chunk) if chunk else 1
    decode_params = SamplingParams(
        temperature=0, max_tokens=args.warmup_tokens + chunks + 8, ignore_eos=True
    )
    long_params = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
    pool = args.prompt_len + args.num_decoders * (args.decoder_prompt_len + chunks + 64) + 1024
    with ModelRunner(
        model_dir,
        dtype=args.dtype,
        page_size=args.page_size,
        max_total_tokens=pool,
        max_model_len=args.prompt_len + 64,
        chunked_prefill_size=chunk,
        max_prefill_tokens=chunk or args.prompt_len,
        enable_prefix_cache=False,
    ) as runner:
        engine = runner.engine
        assert engine is not None
        runner.generate_outputs([long_prompt[:chunk or 512]], long_params)  # warm-up

        scheduled: list[ScheduledBatch] = []
        schedule = engine.scheduler.schedule

        def recording_schedule() -> ScheduledBatch:
            batch = schedule()
            scheduled.append(batch)
            return batch

        engine.scheduler.schedule = recording_schedule  # type: ignore[method-assign]

        decoders = [engine.add_request(row.tolist(), decode_params) for row in short]
        while min(r.num_output_tokens for r in decoders) < args.warmup_tokens:
            engine.step()
        trace = Trace(arrivals=[[] for _ in decoders])
        seen = [r.num_output_tokens for r in decoders]
        t_arrival = time.perf_counter()
        for i, r in enumerate(decoders):
            trace.arrivals[i].append(t_arrival)  # the gap includes the wait from here on
        long_req = engine.add_request(long_prompt, long_params)
        while engine.has_unfinished():
            t0 = time.perf_counter()
            engine.step()
            now = time.perf_counter()
            batch = scheduled[-1]
            if long_req in batch.requests:
                n = batch.num_new_tokens[batch.requests.index(long_req)]
                if n > 1:
                    trace.long_prompt_steps.append((n, now - t0))
            elif not any(r.is_finished for r in decoders):
                trace.decode_only_steps.append(now - t0)
            if long_req.num_output_tokens and not trace.prefill_done:
                trace.prefill_done = now - t_arrival
            for i, r in enumerate(decoders):
                if r.num_output_tokens > seen[i]:
                    seen[i] = r.num_output_tokens
                    trace.arrivals[i].append(now)
        assert all(r.num_output_tokens == decode_params.max_tokens for r in decoders)
    return trace


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num-decoders", type=int, default=16)
    p.add_argument("--decoder-prompt-len", type=int, default=32)
    p.add_argument("--warmup-tokens", type=int, default=4, help="decode tokens before it arrives")
    p.add_argument("--prompt-len", type=int, default=8192, help="the long prompt")
    p.add_argument("--chunk", type=int, default=512, help="chunked_prefill_size of the 2nd run")
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        max_positions = max(9216, args.prompt_len + 1024)
        model_dir = build_model(Path(tmp), args.hidden, args.layers, args.vocab, max_positions)
        whole = run(model_dir, args, None)
        chunked = run(model_dir, args, args.chunk)

    print(
        f"model: Qwen3 hidden={args.hidden} layers={args.layers} {args.dtype}, "
        f"threads={torch.get_num_threads()}"
    )
    print(
        f"workload: {args.num_decoders} requests decoding (prompts of {args.decoder_prompt_len}) "
        f"when a {args.prompt_len}-token prompt arrives"
    )
    print()
    print(
        f"{'chunked_prefill_size':>20}  {'max gap':>9}  {'median gap':>10}  "
        f"{'long-prompt steps':>17}  {'slowest such step':>17}  {'its TTFT':>9}"
    )
    for name, t in (("None", whole), (str(args.chunk), chunked)):
        slowest = max(s for _, s in t.long_prompt_steps)
        print(
            f"{name:>20}  {max(t.gaps()):8.3f}s  {statistics.median(t.gaps()):9.3f}s  "
            f"{len(t.long_prompt_steps):>17}  {slowest:16.3f}s  {t.prefill_done:8.2f}s"
        )
    chunk_steps = [s for _, s in chunked.long_prompt_steps]
    print()
    print(
        f"one {args.prompt_len}-token prefill step: {whole.long_prompt_steps[0][1]:.3f} s; "
        f"a {args.chunk}-token chunk step: median {statistics.median(chunk_steps):.3f} s, "
        f"max {max(chunk_steps):.3f} s (later chunks attend to a longer prefix)"
    )
    print(f"decode-only step (no prefill): median {statistics.median(whole.decode_only_steps):.3f} s")
    print(
        f"largest decode stall: {max(whole.gaps()):.3f} s unchunked vs "
        f"{max(chunked.gaps()):.3f} s chunked ({max(whole.gaps()) / max(chunked.gaps()):.1f}x "
        f"shorter); bounded by the slowest chunk step: "
        f"{max(chunked.gaps()) <= max(chunk_steps) * 1.05 + 0.005}"
    )


if __name__ == "__main__":
    main()
