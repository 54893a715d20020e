"""The batched sampler: filters against hand-computed distributions, penalties, determinism of
seeded rows, logprobs, and a property test that draws never leave the allowed set."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vibe_sgl_lite.sampling import Sampler, SamplerOutput, SamplingParams
from vibe_sgl_lite.sampling.sampler import (
    apply_min_p,
    apply_penalties,
    apply_top_k,
    apply_top_p,
    argmax_rows,
    draw,
    sampling_probs,
)

pytestmark = pytest.mark.unit


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    prompt_ids: Sequence[Sequence[int]] | None = None,
    output_ids: Sequence[Sequence[int]] | None = None,
) -> SamplerOutput:
    """One sampler step; each row's generator is seeded from ``params.seed`` (None if greedy)."""
    gens = [None if p.seed is None else generator(p.seed) for p in params]
    empty: list[list[int]] = [[] for _ in params]
    return Sampler().sample(logits, params, gens, prompt_ids or empty, output_ids or empty)


def kept(probs: torch.Tensor) -> list[list[int]]:
    return (probs > 0).int().tolist()


# ---------------------------------------------------------------- filters on probabilities


def test_top_k_keeps_the_k_most_likely_tokens_per_row() -> None:
    probs = torch.tensor([[0.1, 0.4, 0.2, 0.3]]).repeat(5, 1)
    out = apply_top_k(probs, torch.tensor([2, 1, -1, 0, 10]))
    assert kept(out) == [[0, 1, 0, 1], [0, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    assert torch.equal(out[0], torch.tensor([0.0, 0.4, 0.0, 0.3]))


def test_top_k_keeps_every_token_tied_with_the_kth() -> None:
    out = apply_top_k(torch.tensor([[0.3, 0.1, 0.3, 0.3]]), torch.tensor([2]))
    assert kept(out) == [[1, 0, 1, 1]]


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [
        (0.5, [0, 1, 0, 0]),  # the top token alone reaches 0.5 exactly
        (0.75, [0, 1, 0, 1]),  # 0.5 + 0.25 == 0.75 exactly: the third token is not needed
        (0.74, [0, 1, 0, 1]),
        (0.76, [1, 1, 0, 1]),
        (1e-6, [0, 1, 0, 0]),
        (1.0, [1, 1, 1, 1]),
    ],
)
def test_top_p_keeps_the_smallest_set_reaching_top_p(top_p: float, expected: list[int]) -> None:
    probs = torch.tensor([[0.15, 0.5, 0.1, 0.25]])
    out = apply_top_p(probs, torch.tensor([top_p]))
    assert kept(out) == [expected]
    assert torch.equal(out[out > 0], probs[out > 0])


def test_top_p_renormalises_its_input_first() -> None:
    out = apply_top_p(torch.tensor([[0.25, 0.125, 0.075, 0.05]]), torch.tensor([0.7]))
    assert kept(out) == [[1, 1, 0, 0]]


def test_top_p_of_one_keeps_tokens_that_float_rounding_would_drop() -> None:
    probs = torch.softmax(torch.tensor([[30.0, 0.0, 0.0, 0.0]]), dim=-1)
    assert probs[0, 0] == 1.0 and probs[0, 1] > 0
    assert torch.equal(apply_top_p(probs, torch.tensor([1.0])), probs)


@pytest.mark.parametrize(
    ("min_p", "expected"),
    [
        (0.0, [1, 1, 1, 1]),
        (0.2, [1, 1, 1, 1]),  # threshold 0.1 == the smallest probability: kept
        (0.25, [1, 1, 0, 0]),
        (0.6, [1, 1, 0, 0]),  # threshold 0.3 == the second probability: kept
        (0.61, [1, 0, 0, 0]),
        (1.0, [1, 0, 0, 0]),
    ],
)
def test_min_p_drops_tokens_below_min_p_times_the_max(min_p: float, expected: list[int]) -> None:
    out = apply_min_p(torch.tensor([[0.5, 0.3, 0.1, 0.1]]), torch.tensor([min_p]))
    assert kept(out) == [expected]


# ---------------------------------------------------------------- the full distribution

FOUR = torch.tensor([0.4, 0.3, 0.2, 0.1])


@pytest.mark.parametrize(
    ("temperature", "expected"),
    [(1.0, [0.2, 0.8]), (2.0, [1 / 3, 2 / 3]), (0.5, [1 / 17, 16 / 17])],
)
def test_temperature_divides_the_logits(temperature: float, expected: list[float]) -> None:
    logits = torch.tensor([[0.0, math.log(4.0)]])
    probs = sampling_probs(logits, [SamplingParams(temperature=temperature)])
    torch.testing.assert_close(probs, torch.tensor([expected]))


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [0.4, 0.3, 0.2, 0.1]),
        ({"top_k": 3}, [4 / 9, 3 / 9, 2 / 9, 0]),
        ({"top_p": 0.75}, [4 / 9, 3 / 9, 2 / 9, 0]),  # mass before 0.2 is 0.7 < 0.75
        ({"top_k": 3, "top_p": 0.75}, [4 / 7, 3 / 7, 0, 0]),  # top-p sees top-k's 7/9 >= 0.75
        ({"min_p": 0.3}, [4 / 9, 3 / 9, 2 / 9, 0]),  # threshold 0.12
        ({"min_p": 0.3, "temperature": 0.5}, [0.64, 0.36, 0, 0]),  # min-p after temperature
        ({"top_k": 3, "top_p": 0.75, "min_p": 0.8}, [1.0, 0, 0, 0]),
    ],
)
def test_sampling_probs_chain_matches_hand_computation(
    kwargs: dict[str, Any], expected: list[float]
) -> None:
    probs = sampling_probs(FOUR.log()[None], [SamplingParams(**kwargs)])
    torch.testing.assert_close(probs, torch.tensor([expected]))


def test_sampling_probs_filters_each_row_with_its_own_params() -> None:
    params = [SamplingParams(top_k=1), SamplingParams(), SamplingParams(min_p=0.6)]
    probs = sampling_probs(FOUR.log().repeat(3, 1), params)
    expected = [[1, 0, 0, 0], [0.4, 0.3, 0.2, 0.1], [4 / 7, 3 / 7, 0, 0]]
    torch.testing.assert_close(probs, torch.tensor(expected))


def test_sampling_probs_rejects_greedy_rows() -> None:
    with pytest.raises(ValueError, match="temperature"):
        sampling_probs(torch.zeros(1, 3), [SamplingParams(temperature=0)])


# ---------------------------------------------------------------- penalties


def test_repetition_penalty_covers_prompt_and_output_on_both_signs() -> None:
    logits = torch.tensor([[2.0, -2.0, 1.0, -1.0, 0.5]]).repeat(3, 1)
    params = [SamplingParams(repetition_penalty=r) for r in (2.0, 0.5, 1.0)]
    out = apply_penalties(logits, params, [[0, 3]] * 3, [[1, 1]] * 3)
    expected = [
        [1.0, -4.0, 1.0, -2.0, 0.5],  # prompt tokens 0 and 3 count too; a repeat is not doubled
        [4.0, -1.0, 1.0, -0.5, 0.5],  # penalty < 1 encourages repeats
        [2.0, -2.0, 1.0, -1.0, 0.5],
    ]
    assert torch.equal(out, torch.tensor(expected))
    assert torch.equal(logits[0], torch.tensor([2.0, -2.0, 1.0, -1.0, 0.5]))


def test_frequency_and_presence_count_output_tokens_only() -> None:
    params = [
        SamplingParams(frequency_penalty=0.5, presence_penalty=0.25),
        SamplingParams(frequency_penalty=-1.0),
        SamplingParams(presence_penalty=2.0),
    ]
    out = apply_penalties(torch.zeros(3, 4), params, [[0, 0, 0]] * 3, [[1, 1, 2]] * 3)
    expected = [[0.0, -1.25, -0.75, 0.0], [0.0, 2.0, 1.0, 0.0], [0.0, -2.0, -2.0, 0.0]]
    assert torch.equal(out, torch.tensor(expected))


def test_repetition_penalty_comes_before_frequency_penalty() -> None:
    params = [SamplingParams(repetition_penalty=2.0, frequency_penalty=1.0)]
    out = apply_penalties(torch.tensor([[3.0, 1.0]]), params, [[]], [[0]])
    assert torch.equal(out, torch.tensor([[0.5, 1.0]]))  # 3 / 2 - 1, not (3 - 1) / 2


def test_penalties_reject_token_ids_outside_the_vocabulary() -> None:
    with pytest.raises(ValueError, match="token ids"):
        apply_penalties(torch.zeros(1, 4), [SamplingParams(repetition_penalty=1.2)], [[4]], [[]])


# ---------------------------------------------------------------- greedy


def test_greedy_is_argmax_whatever_the_filters_and_dtype() -> None:
    logits = torch.randn(4, 50, generator=generator(0)).to(torch.bfloat16)
    params = [SamplingParams(temperature=0, top_k=3, top_p=0.1, min_p=0.9)] * 4
    assert run(logits, params).token_ids == logits.float().argmax(dim=-1).tolist()


def test_greedy_row_does_not_touch_its_generator() -> None:
    g = generator(5)
    before = g.get_state()
    Sampler().sample(torch.randn(1, 8), [SamplingParams(temperature=0)], [g], [[]], [[]])
    assert torch.equal(g.get_state(), before)


@pytest.mark.parametrize(
    "kwargs",
    [{"repetition_penalty": 2.0}, {"frequency_penalty": 0.2}, {"presence_penalty": 0.2}],
)
def test_penalties_apply_to_greedy_rows(kwargs: dict[str, Any]) -> None:
    params = [SamplingParams(temperature=0, **kwargs)]
    out = run(torch.tensor([[2.0, 1.9]]), params, prompt_ids=[[0]], output_ids=[[0]])
    assert out.token_ids == [1]


def test_mixed_batch_greedy_rows_argmax_and_sampled_rows_follow_top_k() -> None:
    logits = torch.tensor([[0.0, 5.0, 1.0], [0.0, 5.0, 1.0], [3.0, 0.0, 3.0]])
    params = [
        SamplingParams(temperature=0),
        SamplingParams(seed=1, top_k=1),
        SamplingParams(seed=2),
    ]
    out = run(logits, params)
    assert out.token_ids[:2] == [1, 1]
    assert out.token_ids[2] in {0, 1, 2}


# ---------------------------------------------------------------- reproducibility


def decode(batch: list[tuple[SamplingParams, int]], steps: int, vocab: int = 64) -> list[list[int]]:
    """Run ``steps`` sampler steps; row ``i`` sees logits seeded by its ``batch[i][1]`` and step."""
    params = [p for p, _ in batch]
    gens = [None if p.seed is None else generator(p.seed) for p in params]
    prompts = [[3, 4, 5]] * len(batch)
    outputs: list[list[int]] = [[] for _ in batch]
    for step in range(steps):
        logits = torch.stack(
            [torch.randn(vocab, generator=generator(1000 * key + step)) * 3 for _, key in batch]
        )
        out = Sampler().sample(logits, params, gens, prompts, outputs)
        outputs = [seq + [t] for seq, t in zip(outputs, out.token_ids)]
    return outputs


def test_seeded_row_is_independent_of_the_rest_of_the_batch() -> None:
    target = (
        SamplingParams(temperature=0.9, top_k=40, top_p=0.95, repetition_penalty=1.3, seed=7),
        1,
    )
    others = [
        (SamplingParams(temperature=0), 2),
        (SamplingParams(seed=8, min_p=0.2, frequency_penalty=1.0), 3),
        (SamplingParams(seed=9, top_k=2, presence_penalty=-1.0), 4),
        (SamplingParams(seed=7, temperature=1.5), 5),
    ]
    alone = decode([target], steps=20)[0]
    assert decode([others[0], target, others[1]], steps=20)[1] == alone
    assert decode([*others, target], steps=20)[4] == alone
    assert len(set(alone)) > 5


def test_same_seed_repeats_and_different_seed_differs() -> None:
    def sequence(seed: int) -> list[int]:
        g = generator(seed)
        probs = torch.full((100,), 0.01)
        return [int(draw(probs, g)) for _ in range(50)]

    assert sequence(1) == sequence(1)
    assert sequence(1) != sequence(2)
    assert sum(a == b for a, b in zip(sequence(1), sequence(2))) < 10


# ---------------------------------------------------------------- distribution of draws


def test_empirical_frequencies_match_the_filtered_distribution() -> None:
    base = torch.tensor([0.3, 0.25, 0.2, 0.1, 0.08, 0.07])
    expected = torch.tensor([0.4, 1 / 3, 4 / 15, 0, 0, 0])  # each filter removes one token
    n = 6000
    params = [
        SamplingParams(temperature=2.0, top_k=5, top_p=0.9, min_p=0.35, seed=s) for s in range(n)
    ]
    torch.testing.assert_close(sampling_probs(2 * base.log()[None], params[:1])[0], expected)
    tokens = run((2 * base.log()).repeat(n, 1), params).token_ids
    counts = torch.bincount(torch.tensor(tokens), minlength=6).double()
    assert counts[3:].sum() == 0
    chi2 = ((counts[:3] - n * expected[:3]) ** 2 / (n * expected[:3])).sum()
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom


def test_masked_tokens_are_never_drawn() -> None:
    logits = torch.zeros(200, 8)
    logits[:, 5:] = -math.inf
    tokens = run(logits, [SamplingParams(seed=s) for s in range(200)]).token_ids
    assert set(tokens) == {0, 1, 2, 3, 4}


# ---------------------------------------------------------------- logprobs


def test_logprobs_come_from_the_raw_logits() -> None:
    logits = torch.randn(3, 30, generator=generator(3))
    params = [
        SamplingParams(logprobs=5, temperature=0.5, repetition_penalty=1.5, seed=1),
        SamplingParams(logprobs=0, temperature=0),
        SamplingParams(),
    ]
    out = run(logits, params[:2] + [SamplingParams(seed=2)], prompt_ids=[[0, 1, 2]] * 3)
    raw = torch.log_softmax(logits, dim=-1)
    first, second, third = out.logprobs
    assert first is not None and second is not None and third is None
    assert first.token_id == out.token_ids[0]
    assert first.logprob == pytest.approx(raw[0, first.token_id].item(), abs=1e-6)
    values, ids = raw[0].topk(5)
    assert [t for t, _ in first.top] == ids.tolist()
    assert [lp for _, lp in first.top] == pytest.approx(values.tolist(), abs=1e-6)
    assert [lp for _, lp in first.top] == sorted((lp for _, lp in first.top), reverse=True)
    assert second.top == [] and second.token_id == int(logits[1].argmax())
    assert second.logprob == pytest.approx(raw[1].max().item(), abs=1e-6)


def test_sample_rejects_per_row_lists_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="generators"):
        Sampler().sample(torch.zeros(2, 4), [SamplingParams()] * 2, [None], [[], []], [[], []])


# ---------------------------------------------------------------- property


def allowed_tokens(logits: list[float], p: SamplingParams, eps: float = 1e-4) -> set[int]:
    """A float64 reference of top-k/top-p/min-p, loosened by ``eps`` and by ties, so it is a
    superset of what any correct float32 implementation may keep."""
    scaled = [x / p.temperature for x in logits]
    weights = [math.exp(x - max(scaled)) for x in scaled]
    probs = [w / sum(weights) for w in weights]
    keep = set(range(len(logits)))
    if p.top_k > 0:
        kth = sorted(logits, reverse=True)[min(p.top_k, len(logits)) - 1]
        keep = {i for i in keep if logits[i] >= kth}
    if p.top_p < 1:
        mass = sum(probs[i] for i in keep)
        keep = {
            i
            for i in keep
            if sum(probs[j] for j in keep if probs[j] > probs[i]) / mass < p.top_p + eps
        }
    return {i for i in keep if probs[i] >= p.min_p * max(probs) - eps}


@st.composite
def batches(pick: st.DrawFn) -> tuple[torch.Tensor, list[SamplingParams]]:
    vocab = pick(st.integers(2, 24))
    rows = pick(st.integers(1, 3))
    halves = pick(st.lists(st.integers(-12, 12), min_size=vocab * rows, max_size=vocab * rows))
    params = [
        SamplingParams(
            temperature=pick(st.floats(0.05, 3.0)),
            top_k=pick(st.integers(-1, vocab + 2)),
            top_p=pick(st.floats(0.01, 1.0)),
            min_p=pick(st.floats(0.0, 1.0)),
            seed=pick(st.integers(0, 2**32 - 1)),
        )
        for _ in range(rows)
    ]
    return torch.tensor(halves, dtype=torch.float32).view(rows, vocab) / 2, params


@settings(max_examples=100, deadline=None)
@given(batches())
def test_draws_stay_in_the_allowed_set(batch: tuple[torch.Tensor, list[SamplingParams]]) -> None:
    logits, params = batch
    out = run(logits, params)
    probs = sampling_probs(logits, params)
    for row, (token, p) in enumerate(zip(out.token_ids, params)):
        assert 0 <= token < logits.shape[1]
        assert probs[row, token] > 0
        assert token in allowed_tokens(logits[row].tolist(), p)
        assert logits[row][probs[row] > 0].max() == logits[row].max()


SPECIAL_VALUES = st.sampled_from([0.0, 1.0, -1.0, 2.5, float("inf"), float("-inf"), float("nan")])


@settings(max_examples=300, deadline=None)
@given(
    rows=st.integers(0, 4),
    vocab=st.integers(1, 70),
    block=st.integers(1, 16),
    data=st.data(),
)
def test_argmax_rows_returns_torch_argmax_ids(rows: int, vocab: int, block: int, data: Any) -> None:
    """Ties (few distinct values), infinities and NaNs anywhere, the tail block included."""
    values = data.draw(st.lists(SPECIAL_VALUES, min_size=rows * vocab, max_size=rows * vocab))
    x = torch.tensor(values, dtype=torch.float32).reshape(rows, vocab)
    assert torch.equal(argmax_rows(x, block), x.argmax(dim=-1))
    if rows:
        assert torch.equal(argmax_rows(x[0], block), x[0].argmax())


def test_argmax_rows_on_a_real_vocabulary() -> None:
    torch.manual_seed(0)
    x = torch.randn(8, 151_936)
    x[3, 151_935] = 10.0  # the tail block (151,936 = 37 * 4096 + 448) wins
    x[5, 7] = x[5, 4096 * 20] = 10.0  # a tie across blocks: the first id
    assert torch.equal(argmax_rows(x), x.argmax(dim=-1))
    assert argmax_rows(x)[3] == 151_935 and argmax_rows(x)[5] == 7
