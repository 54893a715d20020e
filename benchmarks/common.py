"""Scaffolding shared by the benchmark scripts.

The scripts run as ``python benchmarks/<name>.py`` from the repository root, so this folder is
``sys.path[0]`` and they ``import common``. Importing it puts the repository root on
``sys.path`` too (for ``vibe_sgl_lite`` when it is not installed). The random models come from
``vibe_sgl_lite.bench.shapes``, the one builder ``vibe-sgl-lite bench`` uses, sized by
``Shape.scaled`` from ``--hidden``/``--layers``/``--vocab``.
"""

from __future__ import annotations

import argparse
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # an uninstalled checkout

from vibe_sgl_lite.bench import shapes  # noqa: E402


def random_qwen3(args: argparse.Namespace, *, max_positions: int) -> AbstractContextManager[Path]:
    """``vibe_sgl_lite.bench.shapes.random_qwen3`` of ``Shape.scaled`` from ``--hidden``/
    ``--layers``/``--vocab``, with an untied LM head, in a temporary folder."""
    shape = shapes.Shape.scaled(args.hidden, args.layers, args.vocab)
    return shapes.random_qwen3(shape, max_positions=max_positions, tie_embeddings=False)


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
