"""Greedy output with speculation on is token-identical to greedy output without it.

Drafts come from n-gram lookup and from a scripted proposer that knows the answer and lies at
random positions (so every accept length from 0 to k occurs), through the features that touch
the same pages: prefix-cache hits, chunked prefill, preemption, small pages, and stops that
fall inside an accepted run (max_tokens, stop strings, stop token ids).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.speculative.conftest import SpeculativeRunner
from tests.speculative.scripted import script
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams

pytestmark = pytest.mark.usefixtures("check_invariants")

PROMPTS = [
    "Once upon a time there was a tiny language model",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "def forward(self, x): return self.proj(x) + 1  # residual def forward(self, x):",
    "Once upon a time there was a tiny language model that lived on a small CPU.",
    "1 2 3 4 5 6 7 8 9 10",
]


def _outputs(runner: ModelRunner, params: list[SamplingParams]) -> list[list[int]]:
    return [o.token_ids for o in runner.generate_outputs(PROMPTS, params)]


def _params(max_tokens: int = 40, **extra: Any) -> list[SamplingParams]:
    return [
        SamplingParams(temperature=0, max_tokens=max_tokens - 3 * i, **extra)
        for i in range(len(PROMPTS))
    ]


@pytest.fixture(scope="module")
def reference(qwen3_dir: Path) -> dict[str, Any]:
    with ModelRunner(qwen3_dir, page_size=4, num_threads=1) as runner:
        outs = runner.generate_outputs(PROMPTS, _params())
    return {
        "outputs": [o.token_ids for o in outs],
        "by_prompt": {tuple(o.prompt_token_ids): o.token_ids for o in outs},
    }


SETTINGS = [
    dict(page_size=4),
    dict(page_size=1),
    dict(page_size=4, chunked_prefill_size=8),
    dict(page_size=4, max_total_tokens=96),  # preemption
    dict(page_size=16, enable_prefix_cache=False),
]


CASES = [(SETTINGS[0], 0.0), (SETTINGS[0], 1.0)] + [(s, 0.5) for s in SETTINGS]


@pytest.mark.parametrize(
    ("settings", "lie"),
    CASES,
    ids=[",".join(f"{k}={v}" for k, v in s.items()) + f",lie={lie}" for s, lie in CASES],
)
def test_scripted_drafts_leave_greedy_output_unchanged(
    speculative_runner: SpeculativeRunner,
    reference: dict[str, Any],
    settings: dict[str, Any],
    lie: float,
) -> None:
    with speculative_runner(speculative_num_draft_tokens=5, **settings) as runner:
        script(runner, reference["by_prompt"], lie, seed=7)
        for _ in range(2):  # the second pass meets its own prompts in the prefix cache
            assert _outputs(runner, _params()) == reference["outputs"]
        stats = runner.get_stats()
        assert stats["spec_num_draft_tokens"] > 0
        if lie == 0.0:
            assert stats["spec_acceptance_rate"] == 1.0
        if "max_total_tokens" in settings:
            assert stats["num_preemptions"] > 0
        assert stats["kv_pages_free"] + stats["num_cached_pages"] == stats["kv_pages_total"]


def test_ngram_drafts_leave_greedy_output_unchanged(
    speculative_runner: SpeculativeRunner, reference: dict[str, Any]
) -> None:
    with speculative_runner(page_size=4) as runner:
        assert _outputs(runner, _params()) == reference["outputs"]
        assert runner.get_stats()["spec_num_draft_tokens"] > 0


@pytest.mark.parametrize("k", [1, 3, 8])
def test_stops_inside_an_accepted_run_cut_it_where_plain_decoding_stops(
    qwen3_dir: Path, speculative_runner: SpeculativeRunner, reference: dict[str, Any], k: int
) -> None:
    """Every stop is placed so that it falls inside a run of accepted drafts."""
    out0 = reference["outputs"][0]
    with ModelRunner(qwen3_dir, page_size=4, num_threads=1) as plain:
        text0 = plain.generate(PROMPTS[0], temperature=0, max_tokens=40)
        stop_string = text0[len(text0) // 2 : len(text0) // 2 + 3]
        cases = [
            SamplingParams(temperature=0, max_tokens=7),
            SamplingParams(temperature=0, max_tokens=40, stop_token_ids=[out0[5]]),
            SamplingParams(temperature=0, max_tokens=40, stop=[stop_string]),
            SamplingParams(temperature=0, max_tokens=40, logprobs=2),
        ]
        expected = plain.generate_outputs([PROMPTS[0]] * len(cases), cases)
    with speculative_runner(page_size=4, speculative_num_draft_tokens=k) as runner:
        script(runner, reference["by_prompt"], 0.0, seed=0)
        got = runner.generate_outputs([PROMPTS[0]] * len(cases), cases)
    for g, e in zip(got, expected):
        assert (g.token_ids, g.text, g.finish_reason) == (e.token_ids, e.text, e.finish_reason)
    assert got[3].logprobs is not None and expected[3].logprobs is not None
    for a, b in zip(got[3].logprobs, expected[3].logprobs):
        assert a.token_id == b.token_id and a.logprob == pytest.approx(b.logprob, abs=1e-5)
        assert [t for t, _ in a.top] == [t for t, _ in b.top]


def test_penalties_count_the_drafts_before_each_position(
    qwen3_dir: Path, speculative_runner: SpeculativeRunner, reference: dict[str, Any]
) -> None:
    params = _params(repetition_penalty=1.3, frequency_penalty=0.5)
    with ModelRunner(qwen3_dir, page_size=4, num_threads=1) as plain:
        expected = _outputs(plain, params)
    with speculative_runner(page_size=4) as runner:
        assert runner.engine is not None
        tokenizer = runner.engine.tokenizer
        by_prompt = {
            tuple(tokenizer.prompt_ids(p, 10**6, 10**6)): o for p, o in zip(PROMPTS, expected)
        }
        script(runner, by_prompt, 0.3, seed=1)
        assert _outputs(runner, params) == expected
        assert runner.get_stats()["spec_num_accepted_tokens"] > 0


def test_requests_with_plugins_decode_without_drafts(
    qwen3_dir: Path, speculative_runner: SpeculativeRunner
) -> None:
    with ModelRunner(qwen3_dir, num_threads=1) as plain:
        expected = plain.generate(PROMPTS[1], temperature=0, max_tokens=20, logit_bias={5: 2.0})
    with speculative_runner() as runner:
        got = runner.generate(PROMPTS[1], temperature=0, max_tokens=20, logit_bias={5: 2.0})
        assert got == expected
        assert runner.get_stats()["spec_num_draft_tokens"] == 0
