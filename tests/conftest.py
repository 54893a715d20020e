from __future__ import annotations

import os
from pathlib import Path

# Triton kernels run on CPU through triton's interpreter; it must be chosen before any kernel
# module is imported (``triton.jit`` reads it at decoration time).
os.environ.setdefault("TRITON_INTERPRET", "1")
# Tests run one per core under pytest-xdist, and so do the engines they start in subprocesses
# (the CLI, the server, TP workers): intra-op threads would only fight each other.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest

from tests.model_factory import build_qwen3, build_tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """The default tiny Qwen3: GQA ratio 2, head_dim 16 != hidden/heads, untied embeddings."""
    return build_qwen3(tmp_path_factory.mktemp("qwen3"), tokenizer_dir)


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(1)
