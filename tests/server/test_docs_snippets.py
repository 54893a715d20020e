"""docs/serving.md's Python example runs as written against a live server of the bundled model,
and prints what it means to: the streamed answer, then the usage, never a ``None``."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.server.conftest import serve
from vibe_sgl_lite import ModelRunner

DOC = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
DOC_URL = "http://127.0.0.1:30000/v1"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_streaming_example_prints_the_answer_then_the_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    (block,) = python_blocks()
    assert DOC_URL in block
    with ModelRunner(max_total_tokens=1024) as runner, serve(runner, "tiny-shakespeare") as live:
        exec(compile(block.replace(DOC_URL, live.base_url + "/v1"), str(DOC), "exec"), {})
    text, usage = capsys.readouterr().out.rsplit("\n", 1)[0].rsplit("\n", 1)
    assert text and not text.endswith("None")  # the finishing chunk's content is None
    assert usage.startswith("CompletionUsage(") and "completion_tokens=" in usage
