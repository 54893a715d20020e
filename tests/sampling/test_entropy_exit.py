"""``EntropyExit`` (``enable_entropy_early_exit``): the entropy it measures, and end to end on a
looping model whose per-step entropy is known (near 0, or near ln(vocab) on one transition)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from tests.model_factory import build_looping_qwen3
from tests.sampling.plugin_rows import Row
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling.entropy import EntropyExit, next_token_entropy


def test_entropy_in_nats_of_each_row_and_logits_untouched() -> None:
    logits = torch.tensor(
        [[0.0, 0.0, 0.0, 0.0], [2.0, -1.0, 0.5, float("-inf")], [50.0, 0.0, 0.0, 0.0]]
    )
    before = logits.clone()
    out = EntropyExit().process_logits(logits, [])  # no rows: the entropies are not kept
    assert torch.equal(out, before) and torch.equal(logits, before)
    probs = [math.exp(x) for x in (2.0, -1.0, 0.5)]
    probs = [p / sum(probs) for p in probs]
    want = [math.log(4), -sum(p * math.log(p) for p in probs), 0.0]
    assert next_token_entropy(logits).tolist() == pytest.approx(want, abs=1e-6)


def one_step(logits: list[float], threshold: float) -> str | None:
    """The finish reason after one step of a request that exits on its first low step."""
    params = SamplingParams(
        enable_entropy_early_exit=True,
        entropy_threshold=threshold,
        min_tokens_before_exit=0,
        entropy_exit_steps=1,
    )
    plugin, row = EntropyExit(), Row(request_id=0, params=params)
    plugin.process_logits(torch.tensor([logits]), [row])
    [reason] = plugin.after_token([row], [0])
    return reason


@settings(deadline=None)
@given(st.lists(st.floats(-8.0, 8.0), min_size=2, max_size=32))
@example([0.0, 0.0, 0.0, 0.0])  # ln 4
@example([3.0, -1.0, 0.5])
def test_entropy_exactly_at_the_threshold_is_not_low(logits: list[float]) -> None:
    """ "Low" is strictly below ``entropy_threshold``: a step whose entropy equals the threshold
    to the last bit does not count, the next float above it does. The threshold is the float32
    entropy the plugin itself computes for the row, so the two compare as exactly equal."""
    entropy = next_token_entropy(torch.tensor([logits])).item()
    assume(entropy > 0.0)  # entropy_threshold must be > 0
    assert one_step(logits, entropy) is None
    assert one_step(logits, math.nextafter(entropy, math.inf)) == "entropy"


# Two cycles: a confident one, and one whose transition out of WEAK[0] is nearly flat.
CONFIDENT = [10, 11, 12, 13, 14, 15]
WEAK = [20, 21, 22, 23, 24]
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def looping_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return build_looping_qwen3(
        tmp_path_factory.mktemp("looping"),
        tokenizer_dir,
        [CONFIDENT, WEAK],
        scales={WEAK[0]: 0.1},
    )


GREEDY = dict(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)


def exit_params(min_tokens: int, steps: int, threshold: float = 0.1) -> SamplingParams:
    return SamplingParams(
        **GREEDY,
        enable_entropy_early_exit=True,
        entropy_threshold=threshold,
        min_tokens_before_exit=min_tokens,
        entropy_exit_steps=steps,
    )


CONFIDENT_PROMPT = [5, 6, CONFIDENT[0]]
# Output token t of WEAK_PROMPT is sampled after WEAK[t % 5]: the step is high-entropy when
# t % 5 == 0, so after token t the run of low-entropy steps is t % 5 (at most 4).
WEAK_PROMPT = [5, 6, WEAK[0]]


@pytest.mark.integration
@pytest.mark.parametrize(
    "prompt, min_tokens, steps, length",
    [
        (CONFIDENT_PROMPT, 10, 4, 10),  # every step is low: max(min_tokens, steps)
        (CONFIDENT_PROMPT, 2, 7, 7),
        (CONFIDENT_PROMPT, 0, 1, 1),
        (WEAK_PROMPT, 0, 4, 5),  # t = 4: run 4
        (WEAK_PROMPT, 12, 3, 14),  # t >= 11 and t % 5 >= 3: t = 13
        (WEAK_PROMPT, 0, 5, MAX_TOKENS),  # a run never reaches 5
    ],
)
def test_exits_at_the_predicted_token(
    looping_dir: Path, prompt: list[int], min_tokens: int, steps: int, length: int
) -> None:
    with ModelRunner(looping_dir, max_total_tokens=512) as runner:
        [free] = runner.generate_outputs([prompt], SamplingParams(**GREEDY))
        [out] = runner.generate_outputs([prompt], exit_params(min_tokens, steps))
        stats = runner.get_stats()
    assert len(out.token_ids) == length
    assert out.token_ids == free.token_ids[:length]  # the logits were not changed
    exited = length < MAX_TOKENS
    assert out.finish_reason == ("entropy" if exited else "length")
    assert free.finish_reason == "length"
    assert stats["entropy.early_exit_count"] == stats["entropy.finished"] == exited


@pytest.mark.integration
def test_exit_does_not_depend_on_the_batch(looping_dir: Path) -> None:
    cases = [
        (WEAK_PROMPT, exit_params(12, 3)),
        (CONFIDENT_PROMPT, exit_params(3, 5)),
        (CONFIDENT_PROMPT, SamplingParams(temperature=0.0, max_tokens=25, ignore_eos=True)),
        ([7, 8, 9, WEAK[2]], exit_params(0, 4)),
        ([9] * 30 + [CONFIDENT[3]], SamplingParams(temperature=1.0, seed=3, max_tokens=20)),
    ]
    with ModelRunner(looping_dir, max_total_tokens=1024) as runner:
        alone = [runner.generate_outputs([p], s)[0] for p, s in cases]
        together = runner.generate_outputs([p for p, _ in cases], [s for _, s in cases])
        reordered = runner.generate_outputs(
            [p for p, _ in cases[::-1]], [s for _, s in cases[::-1]]
        )
    # [7, 8, 9, WEAK[2]]: output t follows WEAK[(2 + t) % 5], high when t % 5 == 3; run 4 at t=7
    expected = [(14, "entropy"), (5, "entropy"), (25, "length"), (8, "entropy")]
    assert [(len(o.token_ids), o.finish_reason) for o in alone[:4]] == expected
    for a, b, c in zip(alone, together, reordered[::-1]):
        assert (a.token_ids, a.finish_reason) == (b.token_ids, b.finish_reason)
        assert (a.token_ids, a.finish_reason) == (c.token_ids, c.finish_reason)


@pytest.mark.integration
def test_random_model_never_exits(qwen3_dir: Path) -> None:
    prompts = ["Once upon a time", "def forward(self, x):"]
    sampled = dict(temperature=1.0, seed=0, max_tokens=30, ignore_eos=True)
    eager = dict(enable_entropy_early_exit=True, min_tokens_before_exit=0, entropy_exit_steps=1)
    with ModelRunner(qwen3_dir, max_total_tokens=512) as runner:
        free = runner.generate_outputs(prompts, SamplingParams(**sampled))
        outs = runner.generate_outputs(prompts, SamplingParams(**sampled, **eager))
        assert runner.get_stats()["entropy.early_exit_count"] == 0
        # a threshold above ln(vocab) counts every step as low: the same requests exit at 20
        eager.update(min_tokens_before_exit=20, entropy_threshold=100.0)
        high = runner.generate_outputs(prompts, SamplingParams(**sampled, **eager))
        assert runner.get_stats()["entropy.early_exit_count"] == len(prompts)
    assert [o.token_ids for o in outs] == [o.token_ids for o in free]
    assert [o.finish_reason for o in outs] == ["length"] * len(prompts)
    assert [o.token_ids for o in high] == [o.token_ids[:20] for o in free]
    assert [o.finish_reason for o in high] == ["entropy"] * len(prompts)
