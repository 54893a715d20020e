"""Continuous batching: many prompts share every forward pass; a tiny pool forces preemption.

python examples/batching.py [--model DIR]
"""

from __future__ import annotations

import argparse

from vibe_sgl_lite import ModelRunner

PROMPTS = ["ROMEO:", "JULIET:", "KING HENRY:", "First Citizen:", "HAMLET:", "Enter a Messenger."]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    # A pool of 8 pages x 16 tokens cannot hold six requests of ~40 tokens at once.
    with ModelRunner(args.model, max_total_tokens=128, page_size=16) as runner:
        texts = runner.generate_batch(PROMPTS, max_tokens=32, temperature=0)
        for prompt, text in zip(PROMPTS, texts):
            print(f"{prompt}{text}\n---")
        stats = runner.get_stats()
        print({k: stats[k] for k in ("num_steps", "num_preemptions", "kv_pages_free")})


if __name__ == "__main__":
    main()
