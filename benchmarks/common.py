"""Scaffolding shared by the benchmark scripts.

The scripts run as ``python benchmarks/<name>.py`` from the repository root, so this folder is
``sys.path[0]`` and they ``import common``. Importing it puts the repository root on
``sys.path`` too, for ``tests.model_factory`` (and ``vibe_sgl_lite`` when it is not installed).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # for tests.model_factory


def build_random_qwen3(
    out_dir: Path, *, hidden: int, layers: int, vocab: int, max_positions: int
) -> Path:
    """A random Qwen3 with ``hidden // 64`` heads of 64 and one KV head per 256 hidden.

    Writes the fixture tokenizer to ``out_dir / "tok"`` and the model (seed 0, EOS id 0) with a
    copy of the tokenizer to ``out_dir / "model"``, and returns the model folder.
    """
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from tests.model_factory import build_tokenizer

    tok_dir = build_tokenizer(out_dir / "tok")
    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64),
        num_key_value_heads=max(1, hidden // 256),
        head_dim=64,
        max_position_embeddings=max_positions,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model_dir = out_dir / "model"
    Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
    for f in tok_dir.iterdir():
        (model_dir / f.name).write_bytes(f.read_bytes())
    return model_dir


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
