"""Draft-model and EAGLE proposers: greedy output unchanged, and their own KV kept in step.

The KV check: a proposer whose own cache (mirrored page tables, rollback after rejections,
catch-up after plain decodes) were wrong would propose different first drafts than the same
model run from scratch over the whole sequence. With the target as its own draft model every
draft must be accepted; with an EAGLE head, each first draft must equal the head's dense
recomputation from the target's true hidden states.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.model_factory import build_qwen3
from tests.speculative.conftest import SpeculativeRunner
from tests.speculative.random_head import build_random_head
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.batch.forward_batch import BatchRow, ForwardBatch
from vibe_sgl_lite.models.worker import ModelWorker
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.eagle import EagleProposer
from vibe_sgl_lite.speculative.proposer import Draft

PROMPTS = [
    "Once upon a time there was a tiny language model",
    "The quick brown fox jumps over the lazy dog.",
    "1 2 3 4 5 6 7 8 9 10",
    "def forward(self, x): return self.proj(x) + 1",
]
pytestmark = pytest.mark.usefixtures("check_invariants")
SETTINGS: list[dict[str, Any]] = [
    dict(page_size=4),
    dict(page_size=1, chunked_prefill_size=5),
    dict(page_size=4, max_total_tokens=72),
]


@pytest.fixture(scope="module")
def models(
    tmp_path_factory: pytest.TempPathFactory, qwen3_dir: Path, tokenizer_dir: Path
) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("proposers")
    return {
        "draft": build_qwen3(root / "draft", tokenizer_dir, num_hidden_layers=1, seed=3),
        "head": build_random_head(qwen3_dir, root / "head"),
    }


def _params() -> list[SamplingParams]:
    return [SamplingParams(temperature=0, max_tokens=30 - 4 * i) for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def expected(qwen3_dir: Path) -> list[list[int]]:
    with ModelRunner(qwen3_dir, page_size=4, num_threads=1) as runner:
        return [o.token_ids for o in runner.generate_outputs(PROMPTS, _params())]


@pytest.mark.parametrize("settings", SETTINGS, ids=str)
def test_target_as_its_own_draft_model_has_every_draft_accepted(
    qwen3_dir: Path,
    speculative_runner: SpeculativeRunner,
    expected: list[list[int]],
    settings: dict[str, Any],
) -> None:
    with speculative_runner(
        "draft",
        speculative_draft_model_path=str(qwen3_dir),
        speculative_num_draft_tokens=3,
        **settings,
    ) as runner:
        got = [o.token_ids for o in runner.generate_outputs(PROMPTS, _params())]
        stats = runner.get_stats()
    assert got == expected
    assert stats["spec_num_draft_tokens"] > 20
    if "max_total_tokens" not in settings:  # after a preemption the draft's K/V is rebuilt too
        assert stats["spec_acceptance_rate"] == 1.0
    else:
        assert stats["num_preemptions"] > 0 and stats["spec_acceptance_rate"] > 0.9


@pytest.mark.parametrize("algorithm", ["draft", "eagle"])
def test_a_different_proposer_model_leaves_greedy_output_unchanged(
    speculative_runner: SpeculativeRunner,
    models: dict[str, Path],
    expected: list[list[int]],
    algorithm: str,
) -> None:
    path = models["draft" if algorithm == "draft" else "head"]
    for settings in SETTINGS:
        with speculative_runner(
            algorithm, speculative_draft_model_path=str(path), **settings
        ) as runner:
            assert [o.token_ids for o in runner.generate_outputs(PROMPTS, _params())] == expected


def _dense_first_draft(proposer: EagleProposer, target: ModelWorker, tokens: Sequence[int]) -> int:
    """The head's first draft for ``tokens`` computed from scratch: the target's hidden states
    of the whole sequence, then the head over every position in one row, in fresh pools."""
    scratch = ModelWorker.__new__(ModelWorker)
    scratch.__dict__.update(target.__dict__)
    pages = list(range(len(tokens) // target.page_size + 1))
    scratch.kv_pool = type(target.kv_pool)(
        len(target.kv_pool.layers),
        len(pages),
        target.page_size,
        target.kv_pool.num_kv_heads,
        target.kv_pool.head_dim,
        target.kv_pool.dtype,
        target.device,
    )
    _, batch = scratch.forward_with_hidden([BatchRow(list(tokens[:-1]), 0, pages, True)])
    assert batch.hidden_states is not None
    features = torch.cat([torch.zeros_like(batch.hidden_states[:1]), batch.hidden_states])
    pool = proposer.head.new_kv_pool(
        len(pages), target.page_size, target.kv_pool.dtype, target.device
    )
    head_batch = ForwardBatch.build(
        [BatchRow(list(tokens), 0, pages, True)], target.page_size, target.device
    )
    target.attention.prepare(head_batch)
    out = proposer.head(
        head_batch.input_ids,
        features,
        head_batch,
        pool,
        target.attention,
        target.model.embed_tokens,
    )
    return int(target.model.lm_head(out[-1:]).argmax())


def test_eagle_first_drafts_equal_the_heads_dense_recomputation(
    speculative_runner: SpeculativeRunner, models: dict[str, Path], expected: list[list[int]]
) -> None:
    with speculative_runner(
        "eagle",
        page_size=4,
        chunked_prefill_size=6,
        enable_prefix_cache=False,
        speculative_draft_model_path=str(models["head"]),
        speculative_num_draft_tokens=2,
    ) as runner:
        assert runner.engine is not None and runner.engine.speculator is not None
        proposer = runner.engine.speculator.proposer
        assert isinstance(proposer, EagleProposer)
        checked: list[tuple[int, int]] = []
        original = proposer.propose

        def checking(requests: Sequence[Request]) -> list[Draft]:
            drafts = original(requests)
            for req, draft in zip(requests, drafts):
                dense = _dense_first_draft(proposer, proposer.target, req.token_ids)
                checked.append((draft.token_ids[0], dense))
            return drafts

        proposer.propose = checking  # type: ignore[method-assign]
        got = [o.token_ids for o in runner.generate_outputs(PROMPTS, _params())]
    assert got == expected
    assert len(checked) >= 12  # a random head's requests stop speculating after 4 rows
    assert all(a == b for a, b in checked), checked
