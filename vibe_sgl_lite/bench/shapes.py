"""The benchmark's model: a random-weight Qwen3 of a named shape, or the user's.

``--model`` names a Hugging Face folder or a ``.gguf`` file; without it the benchmark builds a
random-weight Qwen3 of ``--shape`` with transformers' own classes in a temporary folder, each
size overridable by a flag of its name. ``build_random_qwen3`` is the one random-model builder
of the repository: ``benchmarks/`` builds its models with it too (``benchmarks/common.py``,
``Shape.scaled``), so every figure comes from the same recipe.

torch and transformers are imported inside the builder: the CLI reads ``SHAPES`` and
``SHAPE_FLAGS`` for its flags, and ``vibe-sgl-lite --help`` must not load them.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
"""The bundled model's tokenizer, copied into the random model: the package cannot use the
test suite's tokenizer factory, and prompts are random ids anyway (the tokenizer only turns the
outputs into text)."""

RANDOM_MODEL_MAX_POSITIONS = 4096
"""The random model's ``max_position_embeddings``, raised to the workload's longest prompt +
output when that is longer: room for the default workload (512 + 256) and then some."""


@dataclass(frozen=True)
class Shape:
    """The sizes of a random Qwen3 (embeddings tied to the LM head, as in the small Qwen3s)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def scaled(cls, hidden: int, layers: int, vocab: int) -> Shape:
        """The recipe the other benchmarks (``benchmarks/common.py``) size their models by:
        ``hidden // 64`` heads of 64, one KV head per 256 hidden, an FFN of ``3 * hidden``."""
        return cls(
            hidden=hidden,
            layers=layers,
            heads=max(1, hidden // 64),
            kv_heads=max(1, hidden // 256),
            head_dim=64,
            intermediate=hidden * 3,
            vocab=vocab,
        )

    def describe(self) -> str:
        return (
            f"hidden {self.hidden}, layers {self.layers}, heads {self.heads}/{self.kv_heads} "
            f"x {self.head_dim}, FFN {self.intermediate}, vocab {self.vocab}"
        )


SHAPES = {
    # The default: the real vocabulary (its 78M-parameter LM head is a large share of each
    # decode step, as in small real models) on a body a CPU decodes quickly.
    "small": Shape(
        hidden=512, layers=8, heads=8, kv_heads=4, head_dim=64, intermediate=1536, vocab=151936
    ),
    # Qwen3-0.6B's published config.json.
    "qwen3-0.6b": Shape(
        hidden=1024, layers=28, heads=16, kv_heads=8, head_dim=128, intermediate=3072, vocab=151936
    ),
}

SHAPE_FLAGS = ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate", "vocab")
"""``Shape`` fields that a flag of the same name overrides (``--intermediate`` is the FFN)."""


def shape_of(args: argparse.Namespace) -> Shape:
    """``--shape``, with any of the ``SHAPE_FLAGS`` the command line sets replacing its sizes."""
    overrides = {k: getattr(args, k) for k in SHAPE_FLAGS if getattr(args, k) is not None}
    return dataclasses.replace(SHAPES[args.shape], **overrides)


def build_random_qwen3(
    out_dir: Path,
    *,
    hidden: int,
    layers: int,
    vocab: int,
    max_positions: int,
    heads: int | None = None,
    kv_heads: int | None = None,
    head_dim: int | None = None,
    intermediate: int | None = None,
    tie_embeddings: bool = False,
) -> Path:
    """A random Qwen3, written (seed 0, EOS id 0) with the bundled tokenizer to ``out_dir /
    "model"``; returns that folder.

    Sizes left out are ``Shape.scaled``'s, with an untied LM head: the recipe the other
    benchmarks rely on.
    """
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from vibe_sgl_lite.core.runner import default_model_path

    given = dict(heads=heads, kv_heads=kv_heads, head_dim=head_dim, intermediate=intermediate)
    shape = dataclasses.replace(
        Shape.scaled(hidden, layers, vocab), **{k: v for k, v in given.items() if v is not None}
    )
    config = Qwen3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=max_positions,
        tie_word_embeddings=tie_embeddings,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    model_dir = out_dir / "model"
    Qwen3ForCausalLM(config).save_pretrained(str(model_dir))
    for name in TOKENIZER_FILES:
        (model_dir / name).write_bytes((default_model_path() / name).read_bytes())
    return model_dir


@contextmanager
def random_qwen3(
    shape: Shape, *, max_positions: int, tie_embeddings: bool = True
) -> Iterator[Path]:
    """``build_random_qwen3`` of ``shape`` in a temporary folder, removed afterwards; the LM
    head tied to the embeddings unless ``tie_embeddings=False``."""
    with tempfile.TemporaryDirectory() as tmp:
        yield build_random_qwen3(
            Path(tmp),
            hidden=shape.hidden,
            layers=shape.layers,
            vocab=shape.vocab,
            max_positions=max_positions,
            heads=shape.heads,
            kv_heads=shape.kv_heads,
            head_dim=shape.head_dim,
            intermediate=shape.intermediate,
            tie_embeddings=tie_embeddings,
        )


def is_gguf(path: Path) -> bool:
    """Whether ``path`` names a llama.cpp file (by its suffix: the file may not exist yet)."""
    return path.suffix.lower() == ".gguf"


def is_model(path: Path) -> bool:
    """What ``--model`` may name: a (Hugging Face) folder or a ``.gguf`` file."""
    return path.is_dir() or (path.is_file() and is_gguf(path))
