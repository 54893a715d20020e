"""Command line: ``vibe-sgl-lite generate [--model DIR|FILE.gguf] PROMPT [--max-tokens N] ...``.

Every engine setting (``EngineConfig``) and every sampling field (``SamplingParams``) is a flag:
the Python name with dashes (``--page-size``, ``--max-tokens``, ...), with the dataclass's default
and help text. The one exception is ``SamplingParams.seed``, spelled ``--sampling-seed`` because
``--seed`` is the runner's. With no ``--model`` the small Shakespeare model shipped in the
package is used.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from collections.abc import Sequence
from typing import Any

from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.sampling import SamplingParams

SAMPLING_FLAG_NAMES = {"seed": "sampling_seed"}
"""Sampling fields whose flag differs from their name (``--seed`` is the engine's)."""


def add_dataclass_flags(
    parser: argparse._ActionsContainer, cls: type, renamed: dict[str, str] | None = None
) -> dict[str, str]:
    """One ``--flag`` per field of dataclass ``cls``; returns ``{dest: field name}``.

    The field's type gives the flag's kind: ``bool`` -> ``--x/--no-x``, ``list[T]`` -> a
    repeatable flag, ``T | None`` -> an optional ``T``. Help text and choices come from the
    field's metadata (``config.setting``) when it has them.
    """
    hints = typing.get_type_hints(cls)
    dests: dict[str, str] = {}
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli", True):
            continue
        dest = (renamed or {}).get(f.name, f.name)
        dests[dest] = f.name
        kind, repeat = _flag_type(hints[f.name])
        if f.metadata.get("cli_type") is not None:
            kind, repeat = f.metadata["cli_type"], False
        help_text = f.metadata.get("help") or f"SamplingParams.{f.name}"
        kwargs: dict[str, Any] = dict(dest=dest, default=f.default, help=help_text)
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            kwargs["choices"] = f.metadata.get("choices")
            kwargs["action"] = "append" if repeat else "store"
            kwargs["default"] = None if repeat else f.default
        parser.add_argument("--" + dest.replace("_", "-"), **kwargs)
    return dests


def _flag_type(hint: Any) -> tuple[type, bool]:
    """``(element type, repeatable)`` of a field annotation such as ``int | None``."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        lists = [a for a in args if typing.get_origin(a) is list]
        if lists:
            return typing.get_args(lists[0])[0], True
        return args[0], False
    if typing.get_origin(hint) is list:
        return typing.get_args(hint)[0], True
    return hint, False


def _model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=None,
        help="Hugging Face model folder or .gguf file (default: the bundled tiny-shakespeare)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str], dict[str, str]]:
    """The parser, and the flag destinations of the engine and the sampling settings."""
    parser = argparse.ArgumentParser(prog="vibe-sgl-lite", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="an OpenAI-compatible HTTP server (docs/serving.md)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _model_flag(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=30000, help="TCP port")
    serve.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $VIBE_SGL_LITE_API_KEY, else none)",
    )
    serve.add_argument(
        "--served-model-name", default=None, help="the model's name in the API (default: folder)"
    )
    add_dataclass_flags(serve.add_argument_group("engine settings"), EngineConfig)
    gen = sub.add_parser(
        "generate",
        help="generate a completion of one or more prompts",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    gen.add_argument("prompt", nargs="*", default=["ROMEO:"], help="prompt(s); default 'ROMEO:'")
    _model_flag(gen)
    gen.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print text as it is generated (one prompt only)",
    )
    gen.add_argument("--stats", action="store_true", help="print engine statistics as JSON")
    engine = add_dataclass_flags(gen.add_argument_group("engine settings"), EngineConfig)
    sampling = add_dataclass_flags(
        gen.add_argument_group("sampling"), SamplingParams, SAMPLING_FLAG_NAMES
    )
    return parser, engine, sampling


def main(argv: Sequence[str] | None = None) -> int:
    parser, engine_dests, sampling_dests = build_parser()
    args = parser.parse_args(argv)
    try:
        # Checked before the model loads: a typo fails in milliseconds, not after a load.
        config = EngineConfig(**{name: getattr(args, d) for d, name in engine_dests.items()})
        if args.command == "serve":
            return _serve(args, config)
        sampling = {name: getattr(args, d) for d, name in sampling_dests.items()}
        SamplingParams(**sampling)
        return _generate(args, config, sampling)
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _serve(args: argparse.Namespace, config: EngineConfig) -> int:
    from vibe_sgl_lite.server import serve

    return serve(
        args.model_path,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        **dataclasses.asdict(config),
    )


def _generate(args: argparse.Namespace, config: EngineConfig, sampling: dict[str, Any]) -> int:
    from vibe_sgl_lite.core.runner import ModelRunner

    with ModelRunner(args.model_path, **dataclasses.asdict(config)) as runner:
        if len(args.prompt) == 1 and args.stream:
            print(args.prompt[0], end="", flush=True)
            try:
                for piece in runner.generate_stream(args.prompt[0], **sampling):
                    print(piece, end="", flush=True)
            finally:
                print()  # an error or Ctrl-C is reported on a line of its own
        else:
            texts = runner.generate_batch(args.prompt, use_tqdm=False, **sampling)
            for prompt, text in zip(args.prompt, texts):
                print(prompt + text)
                print("-" * 40)
        if args.stats:
            print(json.dumps(runner.get_stats(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
