from __future__ import annotations

import os
from pathlib import Path
from typing import Any

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


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` run first, each file's in their usual order (module fixtures are
    still built once): the long ones start while the short ones remain to fill the gaps, so the
    two pytest-xdist workers finish together instead of one running a minute-long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # a stable sort


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n`` without ``--dist`` (xdist then picks "load") schedules by work stealing instead.

    "load" hands each worker a run of consecutive tests up front: with the slow tests first,
    one worker would get nearly all of them. Work stealing also starts each worker on a
    contiguous share (the first gets the slow tests), but a worker that runs dry takes half of
    what the other has not started yet, until both are done. ``--dist`` on the command line is
    obeyed as given."""
    asked = any(arg.startswith("--dist") for arg in config.invocation_params.args)
    if asked or config.getoption("dist") != "load":
        return None  # xdist's own choice
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)
