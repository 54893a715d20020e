"""The benchmark's workload: nano-vllm's offline benchmark, sized for a CPU.

``--num-prompts`` requests of random token ids, prompt lengths uniform in ``--prompt-range``
(32..512) and output lengths uniform in ``--output-range`` (32..256), each request with its own
``max_tokens``, greedy, EOS ignored, drawn from ``--seed`` (the same ``--seed`` that seeds the
runner). ``--equal-lengths`` is the earlier benchmark: every prompt ``--prompt-len`` tokens,
every output ``--output-len``, and transformers' ``generate`` given all prompts as one batch.

A request here is ``BenchRequest``, not the scheduler's ``Request``: it is only what every
engine is asked for (prompt ids and a length), before any engine has state for it.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass

DEFAULT_BATCH = 16
"""transformers ``generate``'s static batch: a user's typical batch size on a CPU."""

EQUAL_LENGTH = 64
"""``--equal-lengths``' prompt and output length unless ``--prompt-len``/``--output-len``."""


@dataclass(frozen=True)
class BenchRequest:
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
) -> list[BenchRequest]:
    """``num_prompts`` requests with lengths uniform in the (inclusive) ranges and prompt ids
    uniform in ``[1, vocab)`` (0 is the random model's EOS and the padding id); the same seed
    gives the same requests. Equal lengths are the ranges ``(n, n)``."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num_prompts):
        prompt_len = rng.randint(*prompt_range)
        max_tokens = rng.randint(*output_range)
        prompt = [rng.randrange(1, vocab) for _ in range(prompt_len)]
        requests.append(BenchRequest(prompt, max_tokens))
    return requests


def workload_sizes(args: argparse.Namespace) -> tuple[tuple[int, int], tuple[int, int], int]:
    """The flags' prompt range, output range and ``generate`` batch: ``--equal-lengths`` turns
    ``--prompt-len``/``--output-len`` into ranges ``(n, n)`` and batches all prompts at once."""
    if args.equal_lengths:
        prompt_len = args.prompt_len or EQUAL_LENGTH
        output_len = args.output_len or EQUAL_LENGTH
        return (prompt_len, prompt_len), (output_len, output_len), args.batch or args.num_prompts
    low, high = args.prompt_range
    out_low, out_high = args.output_range
    return (low, high), (out_low, out_high), args.batch or DEFAULT_BATCH
