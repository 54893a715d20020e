"""Scaffolding shared by the benchmark scripts.

The scripts run as ``python benchmarks/<name>.py`` from the repository root, so this folder is
``sys.path[0]`` and they ``import common``. Importing it puts the repository root on
``sys.path`` too (for ``vibe_sgl_lite`` when it is not installed). The random models come from
``vibe_sgl_lite.cli.bench.build_random_qwen3``, the one builder ``vibe-sgl-lite bench`` uses.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # an uninstalled checkout

from vibe_sgl_lite.cli.bench import build_random_qwen3  # noqa: E402


@contextmanager
def random_qwen3(args: argparse.Namespace, *, max_positions: int) -> Iterator[Path]:
    """``build_random_qwen3`` from ``--hidden``/``--layers``/``--vocab`` in a temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        yield build_random_qwen3(
            Path(tmp),
            hidden=args.hidden,
            layers=args.layers,
            vocab=args.vocab,
            max_positions=max_positions,
        )


def add_common_args(
    parser: argparse.ArgumentParser, *, hidden: int, layers: int, vocab: int
) -> None:
    """``--hidden``, ``--layers``, ``--vocab`` (with these defaults), ``--dtype``, ``--threads``."""
    parser.add_argument("--hidden", type=int, default=hidden)
    parser.add_argument("--layers", type=int, default=layers)
    parser.add_argument("--vocab", type=int, default=vocab)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads; 0: torch's default (all cores)"
    )


def apply_threads(args: argparse.Namespace) -> None:
    """``torch.set_num_threads(--threads)`` unless it is 0 (torch's default)."""
    if args.threads:
        torch.set_num_threads(args.threads)
