"""Speculative sampling preserves the target's distribution exactly (statistical tests).

The claim is about a distribution, so the test is statistical: many thousands of draws of the
first emitted tokens, a chi-square test against the target distribution, and the same test
run on deliberately wrong rules, which it must reject. Thresholds: a correct rule fails with
probability 1e-4 per test; the wrong rules' p-values are astronomically small.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from scipy.stats import chi2_contingency, chisquare

from tests.speculative.conftest import SpeculativeRunner
from tests.speculative.scripted import script
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.sampling.sampler import draw
from vibe_sgl_lite.speculative import accept_sampled

Rule = Callable[
    [torch.Tensor, Sequence[int], torch.Tensor | None, torch.Generator | None], list[int]
]
ALPHA = 1e-4


def wrong_resample_from_target(
    p: torch.Tensor, drafts: Sequence[int], q: torch.Tensor | None, gen: torch.Generator | None
) -> list[int]:
    """A classic bug: on rejection, draw from ``p`` instead of the residual ``max(p - q, 0)``."""
    tokens: list[int] = []
    for j, x in enumerate(drafts):
        q_x = 1.0 if q is None else float(q[j, x])
        if float(torch.rand((), generator=gen)) * q_x < float(p[j, x]):
            tokens.append(x)
            continue
        tokens.append(int(draw(p[j], gen)))
        return tokens
    tokens.append(int(draw(p[len(drafts)], gen)))
    return tokens


def wrong_always_accept(
    p: torch.Tensor, drafts: Sequence[int], q: torch.Tensor | None, gen: torch.Generator | None
) -> list[int]:
    """Accepting every draft: right only when the draft model is the target."""
    return [*drafts, int(draw(p[len(drafts)], gen))]


def _distributions(seed: int, vocab: int = 8, k: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(k + 1, vocab, generator=g) * 1.5, dim=-1)
    q = torch.softmax(torch.randn(k, vocab, generator=g) * 1.5, dim=-1)
    return p, q


def _emitted(rule: Rule, deterministic: bool, trials: int = 8000) -> tuple[list[int], list[int]]:
    """First emitted tokens, and second ones where the first draft was accepted."""
    p, q = _distributions(3)
    gen = torch.Generator().manual_seed(11)
    first, second = [], []
    for _ in range(trials):
        if deterministic:  # an n-gram proposal: always the same (here the likeliest) tokens
            drafts, probs = [int(p[0].argmax()), int(p[1].argmax())], None
        else:
            drafts = [int(draw(q[0], gen)), int(draw(q[1], gen))]
            probs = q
        tokens = rule(p, drafts, probs, gen)
        first.append(tokens[0])
        if tokens[0] == drafts[0] and len(tokens) > 1:
            second.append(tokens[1])
    return first, second


def _p_value(samples: list[int], target: torch.Tensor) -> float:
    counts = Counter(samples)
    observed = [counts[i] for i in range(len(target))]
    target = target.double() / target.double().sum()
    expected = (target * len(samples)).tolist()
    return float(chisquare(observed, expected).pvalue)


@pytest.mark.parametrize("deterministic", [False, True], ids=["draft-model", "ngram"])
def test_accepted_and_resampled_tokens_follow_the_target(deterministic: bool) -> None:
    p, _ = _distributions(3)
    first, second = _emitted(accept_sampled, deterministic)
    assert _p_value(first, p[0]) > ALPHA
    assert len(second) > 800
    assert _p_value(second, p[1]) > ALPHA


@pytest.mark.parametrize("rule", [wrong_resample_from_target, wrong_always_accept])
def test_a_wrong_rule_fails_the_same_test(rule: Rule) -> None:
    p, _ = _distributions(3)
    first, _ = _emitted(rule, deterministic=False)
    assert _p_value(first, p[0]) < 1e-9


def test_engine_sampled_output_is_distributed_as_without_speculation(
    qwen3_dir: Path, speculative_runner: SpeculativeRunner
) -> None:
    """End to end on a tiny model: the second output token (the first one that goes through
    verification) has the same distribution with speculation as without, under temperature,
    top-k, top-p and min-p; a two-sample chi-square test over 1,000 seeded requests each."""
    prompt = "The quick brown fox"
    n = 1000
    params = [
        SamplingParams(temperature=0.7, top_k=24, top_p=0.95, min_p=0.01, max_tokens=3, seed=s)
        for s in range(n)
    ]
    with ModelRunner(qwen3_dir, num_threads=1, max_running_requests=512) as plain:
        greedy = plain.generate_outputs([prompt], SamplingParams(temperature=0, max_tokens=3))
        expected = [o.token_ids[1] for o in plain.generate_outputs([prompt] * n, params)]
    with speculative_runner(
        max_running_requests=512,
        speculative_num_draft_tokens=2,
        speculative_disable_batch_size=1024,
    ) as runner:
        reference = {tuple(greedy[0].prompt_token_ids): greedy[0].token_ids}
        script(runner, reference, 0.0, 0, vocab=2)
        got = [o.token_ids[1] for o in runner.generate_outputs([prompt] * n, params)]
        stats = runner.get_stats()
    assert stats["spec_num_accepted_tokens"] > 30  # verification really ran, both ways
    assert stats["spec_num_accepted_tokens"] < stats["spec_num_draft_tokens"]
    categories = sorted(set(expected) | set(got))
    table = [[Counter(expected)[c] for c in categories], [Counter(got)[c] for c in categories]]
    keep = [i for i in range(len(categories)) if table[0][i] + table[1][i] >= 10]
    rare = [sum(row[i] for i in range(len(categories)) if i not in keep) for row in table]
    table = [[row[i] for i in keep] + [r] for row, r in zip(table, rare)]
    assert chi2_contingency(table).pvalue > ALPHA


def test_seeded_speculative_sampling_replays(speculative_runner: SpeculativeRunner) -> None:
    params = SamplingParams(temperature=0.8, max_tokens=24, seed=5)
    runs = []
    for _ in range(2):
        with speculative_runner() as runner:
            runs.append(runner.generate_outputs(["1 2 3 4 1 2 3 4 1 2"] * 3, params))
    assert [o.token_ids for o in runs[0]] == [o.token_ids for o in runs[1]]
