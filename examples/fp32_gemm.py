"""Our float32 loop (``kernels/fp32_gemm.py``): a request's logprobs no longer depend on its batch.

    python examples/fp32_gemm.py

Runs one prompt alone, then the same prompt beside three others, twice: with every float32
product in our loop (the default on AVX2/AVX-512 CPUs) and with MKL's (``fp32_gemm_max_rows=0``).
Prints, for each, whether the prompt's 16 greedy tokens and their logprobs came out bitwise the
same in both runs, and the decode speed of the batch.
"""

from __future__ import annotations

import time

from vibe_sgl_lite import ModelRunner, SamplingParams


def main() -> None:
    params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True, logprobs=1)
    prompt, others = "ROMEO:\n", ["JULIET:\nO", "First Citizen:\nBefore we proceed", "KING:"]
    for name, rows in (("our loop", 1 << 30), ("MKL", 0)):
        settings = dict(num_threads=1, enable_prefix_cache=False, fp32_gemm_max_rows=rows)
        with ModelRunner(**settings) as runner:  # type: ignore[arg-type]
            (alone,) = runner.generate_outputs([prompt], params)
            start = time.perf_counter()
            batched = runner.generate_outputs([others[0], prompt, *others[1:]], params)[1]
            speed = 4 * 16 / (time.perf_counter() - start)
        same_tokens = alone.token_ids == batched.token_ids
        same_logprobs = alone.logprobs == batched.logprobs
        print(
            f"{name}: same tokens {same_tokens}, bitwise-same logprobs {same_logprobs}, "
            f"{speed:.0f} tokens/s at batch 4"
        )


if __name__ == "__main__":
    main()
