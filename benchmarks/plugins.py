"""What each generation-control plugin costs per step, with a batch of 32 requests decoding.

For each control (none, logit_bias, allowed_token_ids, bad_words, repeat_check, entropy exit,
json_schema) the same 32 prompts run with that control set on every request. Printed per
control: the time spent inside the plugin hooks per step (timed around ``PluginSet``'s two
calls), the whole step time, and the hook time as a share of the step (the baseline's hooks
cost nothing: no plugin applies, so none is called).

    python benchmarks/plugins.py --threads 1
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from common import add_common_args, apply_threads, random_qwen3

from vibe_sgl_lite import ModelRunner, SamplingParams

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "count": {"type": "integer"}},
    "required": ["name", "count"],
}


def controls(vocab: int) -> dict[str, dict[str, Any]]:
    return {
        "none": {},
        "logit_bias (8 ids)": {"logit_bias": {i: -5.0 for i in range(1, 9)}},
        "allowed_token_ids (vocab/2)": {"allowed_token_ids": list(range(vocab // 2))},
        "bad_words (4)": {"bad_words": ["the", "fox", "time", "model"]},
        "repeat_check": {
            "repeat_check": True,
            "repeat_check_window": 64,
            "repeat_block_size": 4,
            "repeat_min_blocks": 8,
        },
        "entropy exit": {"enable_entropy_early_exit": True, "min_tokens_before_exit": 10**6},
        "json_schema": {"json_schema": SCHEMA},
    }


def timed(hook: Callable[..., Any], total: list[float]) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return hook(*args, **kwargs)
        finally:
            total[0] += time.perf_counter() - start

    return wrapper


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--output-len", type=int, default=32)
    add_common_args(p, hidden=256, layers=4, vocab=8192)
    args = p.parse_args()
    apply_threads(args)
    with random_qwen3(args, max_positions=1024) as model_dir:
        with ModelRunner(model_dir, dtype=args.dtype, max_total_tokens=16384) as runner:
            engine = runner.engine
            assert engine is not None
            prompts = [f"Request {i}: once upon a time" for i in range(args.batch)]
            print(f"batch {args.batch}, {args.output_len} tokens each, vocab {args.vocab}")
            print(f"{'control':30} {'hooks/step':>12} {'step':>10} {'hooks share':>12}")
            for name, fields in controls(args.vocab).items():
                hook_time = [0.0]
                plugins = engine.plugins
                original = plugins.process_logits, plugins.after_token
                plugins.process_logits = timed(original[0], hook_time)  # type: ignore[method-assign]
                plugins.after_token = timed(original[1], hook_time)  # type: ignore[method-assign]
                params = SamplingParams(
                    max_tokens=args.output_len, temperature=1.0, seed=0, ignore_eos=True, **fields
                )
                runner.generate_outputs(prompts[:2], params)  # warm-up (grammar compile etc.)
                hook_time[0] = 0.0
                steps_before = engine.scheduler.num_forwards
                start = time.perf_counter()
                runner.generate_outputs(prompts, params)
                elapsed = time.perf_counter() - start
                steps = engine.scheduler.num_forwards - steps_before
                plugins.process_logits, plugins.after_token = original  # type: ignore[method-assign]
                per_step = elapsed / steps
                hooks = hook_time[0] / steps
                print(
                    f"{name:30} {hooks * 1e3:9.3f} ms {per_step * 1e3:7.2f} ms "
                    f"{hooks / per_step:11.1%}"
                )


if __name__ == "__main__":
    main()
