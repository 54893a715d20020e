"""Batched generation throughput: vibe-sgl-lite vs transformers' ``generate``, same run.

Builds a random-weight Qwen3 (default ~30M parameters) in a temporary folder, then generates
``--num-prompts`` completions of ``--output-len`` tokens from prompts of ``--prompt-len``
tokens with each engine (greedy, EOS ignored), and prints tokens/s and the ratio.

    python benchmarks/throughput.py --threads 1 --num-prompts 32
"""

from __future__ import annotations

import argparse
import time

import torch
from common import add_common_args, apply_threads, random_qwen3


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-prompts", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument(
        "--mixed-lengths",
        action="store_true",
        help="prompt lengths uniform in [prompt-len/8, prompt-len] (transformers left-pads)",
    )
    p.add_argument("--output-len", type=int, default=64)
    add_common_args(p, hidden=512, layers=8, vocab=8192)
    args = p.parse_args()
    apply_threads(args)
    dtype = getattr(torch, args.dtype)

    from transformers import AutoModelForCausalLM

    from vibe_sgl_lite import ModelRunner, SamplingParams

    with random_qwen3(args, max_positions=4096) as model_dir:
        g = torch.Generator().manual_seed(0)
        prompts = torch.randint(1, args.vocab, (args.num_prompts, args.prompt_len), generator=g)
        lengths = [args.prompt_len] * args.num_prompts
        if args.mixed_lengths:
            low = max(1, args.prompt_len // 8)
            lengths = torch.randint(low, args.prompt_len + 1, (args.num_prompts,), generator=g)
            lengths = lengths.tolist()
        # Left padding, as transformers' batched generation expects: row i's prompt is its tail.
        mask = torch.zeros_like(prompts)
        for i, n in enumerate(lengths):
            mask[i, args.prompt_len - n :] = 1
        prompts = prompts * mask
        rows = [prompts[i, args.prompt_len - n :].tolist() for i, n in enumerate(lengths)]
        total = args.num_prompts * args.output_len

        hf = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).eval()
        n_params = sum(p.numel() for p in hf.parameters())
        with torch.no_grad():
            hf.generate(prompts[:2, :8], max_new_tokens=2, do_sample=False)  # warm-up
            t0 = time.perf_counter()
            hf_out = hf.generate(
                prompts,
                attention_mask=mask,
                max_new_tokens=args.output_len,
                min_new_tokens=args.output_len,
                do_sample=False,
                pad_token_id=0,
            )
            hf_time = time.perf_counter() - t0
        del hf

        params = SamplingParams(temperature=0, max_tokens=args.output_len, ignore_eos=True)
        with ModelRunner(model_dir, dtype=args.dtype, max_total_tokens=65536) as runner:
            runner.generate_outputs([prompts[0, :8].tolist()], params)  # warm-up
            t0 = time.perf_counter()
            outs = runner.generate_outputs(rows, params)
            ours_time = time.perf_counter() - t0
        same = sum(o.token_ids == hf_out[i, args.prompt_len :].tolist() for i, o in enumerate(outs))

    print(
        f"model: Qwen3 {n_params / 1e6:.1f}M params, {args.dtype}, threads={torch.get_num_threads()}"
    )
    print(
        f"workload: {args.num_prompts} prompts x {min(lengths)}..{max(lengths)} tokens -> "
        f"{args.output_len} new tokens each"
    )
    print(f"transformers generate: {hf_time:7.2f} s  {total / hf_time:8.1f} tok/s")
    print(f"vibe-sgl-lite:         {ours_time:7.2f} s  {total / ours_time:8.1f} tok/s")
    print(f"speedup: {hf_time / ours_time:.2f}x   identical greedy outputs: {same}/{len(outs)}")


if __name__ == "__main__":
    main()
