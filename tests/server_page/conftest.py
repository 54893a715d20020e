from __future__ import annotations

from collections.abc import Iterator

import pytest

from vibe_sgl_lite import ModelRunner

MODEL_NAME = "tiny-shakespeare"


@pytest.fixture(scope="session")
def runner() -> Iterator[ModelRunner]:
    """The bundled model (it has a chat template), shared: each test builds its own app on it,
    one at a time, so each app's metrics start from zero while the engine's stats accumulate."""
    with ModelRunner(max_total_tokens=4096) as runner:
        yield runner
