"""Command line: ``vibe-sgl-lite {generate,chat,serve,bench} [--model DIR|FILE.gguf] ...``.

* ``generate PROMPT...``: complete prompts (streamed when there is one).
* ``chat``: a conversation with the model's chat template, one line of stdin per turn.
* ``serve``: the OpenAI-compatible HTTP server (``server/``); with ``--dp-size N``, N of them
  behind SGLang's model gateway (``gateway/``).
* ``router --worker-urls URL...``: the gateway alone, in front of servers started elsewhere.
* ``bench``: throughput against transformers' ``generate`` on the same weights, in-process.
* ``sim``: the scheduler laboratory: ``sim calibrate`` fits a step cost model on this machine,
  ``sim replay`` runs a trace through the engine's scheduler on a virtual clock (``cli/sim.py``).

Every engine setting (``EngineConfig``) and every sampling field (``SamplingParams``) is a flag:
the Python name with dashes (``--page-size``, ``--max-tokens``, ...), with the dataclass's default
and help text. The one exception is ``SamplingParams.seed``, spelled ``--sampling-seed`` because
``--seed`` is the runner's. With no ``--model`` the small Shakespeare model shipped in the
package is used. Flags are checked before the model loads, so a typo costs milliseconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from vibe_sgl_lite import __version__
from vibe_sgl_lite.cli.bench import add_bench_flags, check_bench_flags, run_bench
from vibe_sgl_lite.cli.flags import (
    SAMPLING_FLAG_NAMES,
    ArgumentParser,
    HelpFormatter,
    add_dataclass_flags,
    flags_of,
    values_of,
)
from vibe_sgl_lite.cli.sim import add_sim_flags, run_sim
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.gateway.data_parallel import ROUTER_POLICIES
from vibe_sgl_lite.sampling import SamplingParams

__all__ = ["SAMPLING_FLAG_NAMES", "add_dataclass_flags", "build_parser", "main"]


def _model_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        "--model-path",
        dest="model_path",
        default=None,
        help="Hugging Face model folder or .gguf file (default: the bundled tiny-shakespeare)",
    )


def _gateway_flags(p: argparse._ActionsContainer) -> None:
    p.add_argument(
        "--router-policy",
        default="cache_aware",
        choices=ROUTER_POLICIES,
        help="how the gateway picks a replica: cache_aware sends a request where its prefix "
        "most likely is cached (docs/scaling.md)",
    )


def _api_key_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (default: $VIBE_SGL_LITE_API_KEY, else none)",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, str], dict[str, str]]:
    """The parser, and the flag destinations of the engine and the sampling settings.

    Every subcommand derives its engine flags from ``EngineConfig`` (and ``generate``/``chat``
    their sampling flags from ``SamplingParams``) with the same destinations, so one pair of
    ``{dest: field}`` maps serves them all.
    """
    parser = ArgumentParser(  # its subcommands' parsers are ArgumentParsers too
        prog="vibe-sgl-lite",
        description="A small, readable LLM inference engine. 'vibe-sgl-lite COMMAND --help' lists "
        "a command's flags with their defaults.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vibe-sgl-lite {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    def subcommand(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, formatter_class=HelpFormatter)

    serve = subcommand("serve", "an OpenAI-compatible HTTP server (docs/serving.md)")
    _model_flag(serve)
    serve.add_argument("--host", default="127.0.0.1", help="address to bind")
    serve.add_argument("--port", type=int, default=30000, help="TCP port")
    _api_key_flag(serve)
    serve.add_argument(
        "--served-model-name", default=None, help="the model's name in the API (default: folder)"
    )
    serve.add_argument(
        "--reasoning-parser",
        default=None,
        metavar="{qwen3,deepseek-r1}",
        help="split <think>...</think> into the chat answers' reasoning_content (default: off)",
    )
    serve.add_argument(
        "--tool-call-parser",
        default=None,
        metavar="{hermes,qwen,llama3}",
        help="parse the model's tool calls into tool_calls (default: off, text stays content)",
    )
    dp = serve.add_argument_group("data parallel (docs/scaling.md)")
    dp.add_argument(
        "--dp-size",
        type=int,
        default=1,
        help="engine replicas (processes sharing the threads), behind SGLang's model gateway on "
        "--port when > 1 (pip install 'vibe-sgl-lite[router]')",
    )
    _gateway_flags(dp)
    engine = add_dataclass_flags(serve.add_argument_group("engine settings"), EngineConfig)

    router = subcommand(
        "router", "SGLang's model gateway in front of running servers, e.g. on other hosts"
    )
    router.add_argument(
        "--worker-urls", nargs="+", required=True, metavar="URL", help="the servers' base URLs"
    )
    router.add_argument("--host", default="127.0.0.1", help="address to bind")
    router.add_argument("--port", type=int, default=30000, help="TCP port")
    router.add_argument(
        "--api-key", default=None, help="the workers' API key (default: $VIBE_SGL_LITE_API_KEY)"
    )
    _gateway_flags(router)

    gen = subcommand("generate", "generate a completion of one or more prompts")
    gen.add_argument("prompt", nargs="*", default=["ROMEO:"], help="prompt(s) to complete")
    _model_flag(gen)
    gen.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="print text as it is generated (one prompt only)",
    )
    gen.add_argument("--stats", action="store_true", help="print engine statistics as JSON")
    add_dataclass_flags(gen.add_argument_group("engine settings"), EngineConfig)
    sampling = add_dataclass_flags(
        gen.add_argument_group("sampling"), SamplingParams, SAMPLING_FLAG_NAMES
    )

    chat = subcommand(
        "chat", "chat with the model's chat template, one line of stdin per turn (/reset, /exit)"
    )
    _model_flag(chat)
    chat.add_argument(
        "--system", default=None, help="system message opening the conversation (default: none)"
    )
    add_dataclass_flags(chat.add_argument_group("engine settings"), EngineConfig)
    add_dataclass_flags(chat.add_argument_group("sampling"), SamplingParams, SAMPLING_FLAG_NAMES)

    bench = subcommand(
        "bench", "batched throughput against transformers' generate, same weights and prompts"
    )
    add_bench_flags(bench)

    sim = subcommand("sim", "the scheduler laboratory: calibrate a cost model, replay a trace")
    add_sim_flags(
        sim,
        lambda sub, name, help: sub.add_parser(
            name, help=help, description=help, formatter_class=HelpFormatter
        ),
    )
    return parser, engine, sampling


def main(argv: Sequence[str] | None = None) -> int:
    parser, engine_dests, sampling_dests = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "sim":
            return run_sim(args)
        if args.command == "router":
            return _router(args)
        # Checked before the model loads: a typo fails in milliseconds, not after a load.
        config = EngineConfig(**values_of(args, engine_dests))
        if args.command == "serve":
            return _serve(args, config)
        if args.command == "bench":
            check_bench_flags(args)
            for line in run_bench(args, config).report():
                print(line)
            return 0
        sampling = values_of(args, sampling_dests)
        SamplingParams(**sampling)
        if args.command == "chat":
            return _chat(args, config, sampling)
        return _generate(args, config, sampling)
    except (ValueError, OSError, ImportError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _api_key(args: argparse.Namespace) -> str | None:
    from vibe_sgl_lite.gateway.data_parallel import API_KEY_ENV

    return args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None


def _router(args: argparse.Namespace) -> int:
    from vibe_sgl_lite.gateway.data_parallel import run_gateway

    return run_gateway(
        args.worker_urls,
        host=args.host,
        port=args.port,
        policy=args.router_policy,
        api_key=_api_key(args),
    )


def _serve(args: argparse.Namespace, config: EngineConfig) -> int:
    from vibe_sgl_lite.gateway.data_parallel import check_dp_size, check_port_free

    check_dp_size(args.dp_size)
    check_port_free(args.host, args.port)  # before the model loads, not after
    if args.dp_size > 1:
        return _serve_data_parallel(args, config)
    from vibe_sgl_lite.server import serve

    return serve(
        args.model_path,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        served_model_name=args.served_model_name,
        reasoning_parser=args.reasoning_parser,
        tool_call_parser=args.tool_call_parser,
        **dataclasses.asdict(config),
    )


def _serve_data_parallel(args: argparse.Namespace, config: EngineConfig) -> int:
    """``args.dp_size`` ``serve`` replicas, each with this command's settings and its share of
    the threads and of ``mem_fraction``, and the gateway on ``--port``."""
    from vibe_sgl_lite.gateway.data_parallel import serve_data_parallel
    from vibe_sgl_lite.utils.threads import default_num_threads

    dp_size = args.dp_size
    if args.model_path is not None and not os.path.exists(args.model_path):
        raise ValueError(f"--model {args.model_path}: no such folder or file")  # not N times
    command = [sys.executable, "-m", "vibe_sgl_lite", "serve", "--host", "127.0.0.1"]
    named = {
        "--model": args.model_path,
        "--served-model-name": args.served_model_name,
        "--reasoning-parser": args.reasoning_parser,
        "--tool-call-parser": args.tool_call_parser,
    }
    command += [
        item for flag, value in named.items() if value is not None for item in (flag, value)
    ]

    def replica(port: int, threads: int) -> list[str]:
        share = dataclasses.replace(
            config, num_threads=threads, mem_fraction=config.mem_fraction / dp_size
        )
        return [*command, *flags_of(share), "--port", str(port)]

    return serve_data_parallel(
        replica,
        dp_size=dp_size,
        host=args.host,
        port=args.port,
        policy=args.router_policy,
        num_threads=config.num_threads or default_num_threads(),
        api_key=_api_key(args),
    )


def _chat(args: argparse.Namespace, config: EngineConfig, sampling: dict[str, Any]) -> int:
    from vibe_sgl_lite.cli.chat import run_chat
    from vibe_sgl_lite.core.runner import ModelRunner

    with ModelRunner(args.model_path, **dataclasses.asdict(config)) as runner:
        return run_chat(runner, sampling, system=args.system)


def _generate(args: argparse.Namespace, config: EngineConfig, sampling: dict[str, Any]) -> int:
    from vibe_sgl_lite.cli.output import print_completions, reader_went_away, stream_completion
    from vibe_sgl_lite.core.runner import ModelRunner

    try:
        with ModelRunner(args.model_path, **dataclasses.asdict(config)) as runner:
            if len(args.prompt) == 1 and args.stream:
                stream_completion(runner, args.prompt[0], sampling)
            else:
                print_completions(runner, args.prompt, sampling)
            if args.stats:
                print(json.dumps(runner.get_stats(), indent=2))
    except BrokenPipeError:  # stdout's reader stopped reading: `generate ... | head -3`
        return reader_went_away()
    return 0
