"""Speculation over a tensor-parallel target: verify rows travel to the worker processes like
any row, and the draft model runs in the driver beside them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.speculative.test_greedy_equivalence import PROMPTS, _params
from vibe_sgl_lite import ModelRunner

pytestmark = [pytest.mark.distributed, pytest.mark.slow]


def test_tp2_ngram_and_draft_model_give_the_same_greedy_tokens(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, page_size=4, num_threads=2) as plain:
        expected = [o.token_ids for o in plain.generate_outputs(PROMPTS, _params())]
    for extra in (
        dict(speculative_adaptive=False, speculative_algorithm="ngram"),
        dict(
            speculative_adaptive=False,
            speculative_algorithm="draft",
            speculative_draft_model_path=str(qwen3_dir),
        ),
    ):
        with ModelRunner(
            qwen3_dir, page_size=4, tp_size=2, num_threads=2, chunked_prefill_size=8, **extra  # type: ignore[arg-type]
        ) as runner:
            got = [o.token_ids for o in runner.generate_outputs(PROMPTS, _params())]
            stats = runner.get_stats()
        assert got == expected, extra
        assert stats["spec_num_draft_tokens"] > 0
        if "speculative_draft_model_path" in extra:  # the target as its own draft: all right
            assert stats["spec_acceptance_rate"] == 1.0
