"""Command line: ``vibe-sgl-lite generate [--model DIR|FILE.gguf] PROMPT [--max-tokens N] ...``.

Flags are the Python names with dashes (``--max-tokens``, ``--page-size``, ...). With no
``--model`` the small Shakespeare model shipped in the package is used.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from vibe_sgl_lite.core.config import SCHEDULE_POLICIES


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=None,
        help="Hugging Face model folder or .gguf file (default: the bundled tiny-shakespeare)",
    )
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-total-tokens", type=int, default=None)
    p.add_argument("--max-running-requests", type=int, default=256)
    p.add_argument("--max-prefill-tokens", type=int, default=8192)
    p.add_argument("--chunked-prefill-size", type=int, default=None)
    p.add_argument("--max-model-len", type=int, default=None)
    p.add_argument("--schedule-policy", default="fcfs", choices=list(SCHEDULE_POLICIES))
    p.add_argument("--enable-prefix-cache", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--attention-backend", default="torch")
    p.add_argument("--kv-cache-dtype", default="auto")


def _sampling_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=-1)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--min-p", type=float, default=0.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument(
        "--sampling-seed",
        dest="sampling_seed",
        type=int,
        default=None,
        help="seed of this request's sampling (SamplingParams.seed)",
    )
    p.add_argument("--stop", action="append", default=None, help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true")


ENGINE_KEYS = (
    "model_path dtype device seed page_size max_total_tokens max_running_requests "
    "max_prefill_tokens chunked_prefill_size max_model_len schedule_policy enable_prefix_cache "
    "attention_backend kv_cache_dtype"
).split()
SAMPLING_KEYS = (
    "max_tokens temperature top_k top_p min_p repetition_penalty frequency_penalty "
    "presence_penalty stop ignore_eos"
).split()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vibe-sgl-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="generate a completion of one or more prompts")
    gen.add_argument("prompt", nargs="*", default=["ROMEO:"], help="prompt(s); default 'ROMEO:'")
    gen.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print text as it is generated (one prompt only)",
    )
    gen.add_argument("--stats", action="store_true", help="print engine statistics as JSON")
    _engine_flags(gen)
    _sampling_flags(gen)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from vibe_sgl_lite.core.runner import ModelRunner

    engine_kwargs: dict[str, Any] = {k: getattr(args, k) for k in ENGINE_KEYS}
    sampling: dict[str, Any] = {k: getattr(args, k) for k in SAMPLING_KEYS}
    sampling["seed"] = args.sampling_seed
    try:
        with ModelRunner(**engine_kwargs) as runner:
            if len(args.prompt) == 1 and args.stream:
                print(args.prompt[0], end="", flush=True)
                for piece in runner.generate_stream(args.prompt[0], **sampling):
                    print(piece, end="", flush=True)
                print()
            else:
                texts = runner.generate_batch(args.prompt, use_tqdm=False, **sampling)
                for prompt, text in zip(args.prompt, texts):
                    print(prompt + text)
                    print("-" * 40)
            if args.stats:
                print(json.dumps(runner.get_stats(), indent=2))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
