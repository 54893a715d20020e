"""``finish_reason`` when the last token allowed is also a stop: the stop wins.

A request can end for two reasons on the same token: it is the ``max_tokens``-th token (or fills
``max_model_len``) *and* it is a stop (an EOS id, an id in ``stop_token_ids``, or it completes a
stop string). The answer must be ``"stop"``: the model did stop, and a client that retries or
continues on ``"length"`` would continue a finished answer. Checking the length limit first gets
this wrong only on that one coinciding token, which no test with a generous ``max_tokens`` sees.

Each case first runs greedily with ``ignore_eos`` to learn the token at position N, then makes
exactly that token a stop and runs again with the limit at N.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vibe_sgl_lite import ModelRunner, SamplingParams

pytestmark = pytest.mark.integration

# An ASCII prompt: the tiny model's continuation of it is printable ASCII for several tokens,
# which the stop-string case needs (a piece of a multi-byte character is never released alone).
PROMPT = "1 2 3 4 5 6 7 8 9 10"
MAX_N = 10


def _greedy(n: int, **kwargs: Any) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, **kwargs)


@pytest.fixture(scope="module")
def runner(qwen3_dir: Path) -> Iterator[ModelRunner]:
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=1024) as r:
        yield r


@pytest.fixture(scope="module")
def free_run(runner: ModelRunner) -> list[int]:
    """Greedy tokens with no stop at all."""
    out = runner.generate_outputs(PROMPT, _greedy(MAX_N, ignore_eos=True))[0]
    assert out.finish_reason == "length" and len(out.token_ids) == MAX_N
    return out.token_ids


def _first_occurrences(tokens: list[int]) -> list[int]:
    """Positions N (1-based) whose token appears there for the first time: making that token a
    stop ends the run exactly at N, not earlier."""
    return [n for n in range(1, len(tokens) + 1) if tokens[n - 1] not in tokens[: n - 1]]


def test_stop_token_id_at_max_tokens_is_stop(runner: ModelRunner, free_run: list[int]) -> None:
    positions = _first_occurrences(free_run)
    assert 1 in positions and max(positions) >= 3, free_run  # the first token and a later one
    for n in positions:
        token = free_run[n - 1]
        plain = runner.generate_outputs(PROMPT, _greedy(n, ignore_eos=True))[0]
        assert plain.token_ids == free_run[:n] and plain.finish_reason == "length"
        out = runner.generate_outputs(PROMPT, _greedy(n, ignore_eos=True, stop_token_ids=[token]))[
            0
        ]
        assert out.token_ids == free_run[:n], n
        assert out.finish_reason == "stop", f"token {token} at max_tokens={n}"


def test_eos_at_max_tokens_is_stop(tmp_path: Path, qwen3_dir: Path, free_run: list[int]) -> None:
    """A checkpoint whose config lists a second EOS id (as chat models list ``<|im_end|>``),
    which greedy decoding produces exactly at ``max_tokens``."""
    n = max(_first_occurrences(free_run))
    model_dir = tmp_path / "two-eos"
    shutil.copytree(qwen3_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["eos_token_id"] = [config["eos_token_id"], free_run[n - 1]]
    (model_dir / "config.json").write_text(json.dumps(config))
    with ModelRunner(model_dir, page_size=4, max_total_tokens=1024) as runner:
        out = runner.generate_outputs(PROMPT, _greedy(n))[0]
        assert out.token_ids == free_run[:n]
        assert out.finish_reason == "stop"
        # the control: the same run ignoring EOS ends on the limit
        ignored = runner.generate_outputs(PROMPT, _greedy(n, ignore_eos=True))[0]
        assert ignored.token_ids == free_run[:n] and ignored.finish_reason == "length"


def test_stop_token_at_max_model_len_is_stop(qwen3_dir: Path, free_run: list[int]) -> None:
    """The other length limit: the stop token is the one that fills ``max_model_len``."""
    n = max(_first_occurrences(free_run))
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=1024) as probe:
        prompt_len = len(probe.tokenizer.encode(PROMPT))
    with ModelRunner(
        qwen3_dir, page_size=4, max_total_tokens=1024, max_model_len=prompt_len + n
    ) as runner:
        params = _greedy(MAX_N * 4, ignore_eos=True, stop_token_ids=[free_run[n - 1]])
        out = runner.generate_outputs(PROMPT, params)[0]
        assert out.token_ids == free_run[:n] and out.finish_reason == "stop"
        plain = runner.generate_outputs(PROMPT, _greedy(MAX_N * 4, ignore_eos=True))[0]
        assert plain.token_ids == free_run[:n] and plain.finish_reason == "length"


def test_stop_string_completed_by_the_last_token_is_stop(runner: ModelRunner) -> None:
    """The stop string is the text of token N alone, absent from the text before it: it
    completes exactly when token N arrives, the last one ``max_tokens`` allows."""
    texts = [""] + [
        runner.generate(PROMPT, temperature=0, max_tokens=n, ignore_eos=True)
        for n in range(1, MAX_N + 1)
    ]
    candidates = []
    for n in range(1, MAX_N + 1):
        before, piece = texts[n - 1], texts[n][len(texts[n - 1]) :]
        if (
            texts[n].startswith(before)
            and piece.strip()
            and piece.isascii()
            and piece not in before
        ):
            candidates.append((n, piece))
    assert len(candidates) >= 2, texts
    for n, stop in candidates:
        out = runner.generate_outputs(PROMPT, _greedy(n, ignore_eos=True, stop=[stop]))[0]
        assert len(out.token_ids) == n
        assert out.text == texts[n - 1]  # the stop string itself is cut
        assert out.finish_reason == "stop", f"stop {stop!r} completed by token {n} = max_tokens"
