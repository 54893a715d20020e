"""What the speculative tests build the same way.

``speculative_runner(algorithm, **settings)``: the session's tiny Qwen3 on one thread, always
speculating (``speculative_adaptive=False``: the guard never turns drafting off, so every test
really verifies drafts). ``check_invariants``: page reference counts checked after every step
(``pytestmark = pytest.mark.usefixtures("check_invariants")`` in a module that wants it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.core.engine import CHECK_INVARIANTS_ENV

SpeculativeRunner = Callable[..., ModelRunner]
"""The type of ``speculative_runner``: ``(algorithm="ngram", **settings) -> ModelRunner``."""


@pytest.fixture
def check_invariants(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CHECK_INVARIANTS_ENV, "1")


@pytest.fixture
def speculative_runner(qwen3_dir: Path) -> SpeculativeRunner:
    def make(algorithm: str = "ngram", **settings: Any) -> ModelRunner:
        return ModelRunner(
            qwen3_dir,
            num_threads=1,
            speculative_adaptive=False,
            speculative_algorithm=algorithm,
            **settings,
        )

    return make
