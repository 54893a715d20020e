"""``RepetitionStop`` (``repeat_check``): the incremental hash against a from-scratch reference,
and end to end on a model whose greedy output loops with a known period."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.model_factory import build_looping_qwen3
from tests.sampling.plugin_rows import Row
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling.repetition import RepetitionStop, RollingBlocks

# ---- the definition, from scratch -------------------------------------------------------------


def reference_repeated(output: list[int], b: int, window: int) -> int:
    """Blocks of ``output[-W:]`` (end-aligned, ``b`` tokens) equal to at least one other."""
    tail = output[-window:] if output else []
    k = len(tail) // b
    blocks = [tail[len(tail) - (j + 1) * b : len(tail) - j * b] for j in range(k)]
    return sum(1 for x in blocks if sum(1 for y in blocks if y == x) >= 2)


def reference_first_stop(seq: list[int], b: int, window: int, m: int, start: int = 0) -> int | None:
    """The output length (>= ``start + 1``) at which the request stops, or None."""
    for length in range(start + 1, len(seq) + 1):
        if reference_repeated(seq[:length], b, window) >= m:
            return length
    return None


def predicted_stop(period: int, b: int, window: int, m: int) -> int | None:
    """Stop length of an output that loops with ``period`` (distinct tokens) from its start:
    blocks repeat every q = p / gcd(p, b), so min(k, 2(k - q)) of k blocks are repeated."""
    q = period // math.gcd(period, b)
    k = max(m, q + math.ceil(m / 2))
    return k * b if k <= window // b else None


def plugin_first_stop(
    seq: list[int],
    b: int,
    window: int,
    m: int,
    start: int = 0,
    plugin: RepetitionStop | None = None,
) -> int | None:
    """Feed ``seq`` through ``after_token`` as the engine does; the first call sees ``start``
    tokens already generated (its state is built from them)."""
    plugin = plugin or RepetitionStop()
    params = SamplingParams(
        max_tokens=len(seq) + 1,
        repeat_check=True,
        repeat_block_size=b,
        repeat_check_window=window,
        repeat_min_blocks=m,
    )
    row = Row(7, params, output_ids=list(seq[:start]))
    for token in seq[start:]:
        [reason] = plugin.after_token([row], [token])
        row.output_ids.append(token)
        if reason == "repetition":
            return len(row.output_ids)
        assert reason is None
    return None


@st.composite
def settings_and_sequence(draw: st.DrawFn) -> tuple[list[int], int, int, int, int]:
    """(sequence, b, W, m, start): random tokens over a small alphabet, or a random prefix then a
    loop (optionally with a few tokens changed), so that both stops and non-stops occur (about
    1 in 3 stops). ``start``: tokens already generated when the plugin first sees the request
    (mostly 0; otherwise its state is built from them)."""
    b = draw(st.integers(1, 5))
    m = draw(st.integers(2, 5))
    window = draw(st.integers(b * m, b * m + 24))
    if draw(st.booleans()):
        seq = draw(st.lists(st.integers(0, draw(st.integers(1, 4))), max_size=120))
    else:
        prefix = draw(st.lists(st.integers(0, 50), max_size=30))
        cycle = draw(st.lists(st.integers(0, 50), min_size=1, max_size=12))
        seq = prefix + (cycle * 120)[: draw(st.integers(0, 100))]
        for i in draw(st.lists(st.integers(0, max(len(seq) - 1, 0)), max_size=3)):
            if seq:
                seq[i] = 99
    start = draw(st.sampled_from([0, 0, draw(st.integers(0, len(seq)))]))  # mostly from 0
    return seq, b, window, m, start


@settings(max_examples=300, deadline=None)
@given(settings_and_sequence())
def test_incremental_stops_exactly_where_the_definition_does(
    case: tuple[list[int], int, int, int, int],
) -> None:
    seq, b, window, m, start = case
    expected = reference_first_stop(seq, b, window, m, start)
    assert plugin_first_stop(seq, b, window, m, start) == expected


@settings(max_examples=100, deadline=None)
@given(settings_and_sequence())
def test_hash_collisions_are_ruled_out_on_the_tokens(
    case: tuple[list[int], int, int, int, int],
) -> None:
    """With a modulus of 2 most unequal blocks collide; the token check keeps every decision."""
    seq, b, window, m, start = case
    with mock.patch.object(RollingBlocks, "MOD", 2):
        got = plugin_first_stop(seq, b, window, m, start)
    assert got == reference_first_stop(seq, b, window, m, start)


def test_every_hash_equal_still_never_stops_a_sequence_without_repeats() -> None:
    with mock.patch.object(RollingBlocks, "MOD", 1):  # all hashes 0: every block "matches"
        assert plugin_first_stop(list(range(300)), 4, 64, 4) is None
        assert plugin_first_stop(list(range(6)) * 20, 4, 64, 4) == 20


@pytest.mark.parametrize("period", [1, 2, 3, 4, 5, 6, 8, 12, 16, 30])
def test_predicted_stop_matches_the_definition(period: int) -> None:
    """The closed form used end to end below, checked against the definition."""
    seq = list(range(period)) * (200 // period + 1)
    assert predicted_stop(period, 4, 64, 4) == reference_first_stop(seq, 4, 64, 4)


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="repeat_check_window"):
        RepetitionStop(window=8, block_size=4, min_blocks=4)
    with pytest.raises(ValueError, match="repeat_block_size"):
        RepetitionStop(block_size=0)
    with pytest.raises(ValueError, match="repeat_check_window"):  # a runner's W, a request's b, m
        RepetitionStop(window=100).add_request(0, SamplingParams(), vocab_size=10)


# ---- end to end on a looping model ------------------------------------------------------------

# Disjoint cycles of these periods; a prompt ending in a cycle's first token makes greedy
# decoding repeat that cycle from the first output token.
PERIODS = [1, 3, 5, 6, 8, 30]
B, W, M, MAX_TOKENS = 4, 64, 4, 80


def cycles() -> Iterator[list[int]]:
    first = 10
    for p in PERIODS:
        yield list(range(first, first + p))
        first += p


@pytest.fixture(scope="module")
def looping_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    return build_looping_qwen3(tmp_path_factory.mktemp("looping"), tokenizer_dir, list(cycles()))


PROMPTS = [[5, 6, c[0]] for c in cycles()]
GREEDY = dict(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
CHECK = dict(repeat_check=True, repeat_block_size=B, repeat_check_window=W, repeat_min_blocks=M)


def expected_lengths() -> list[int]:
    return [predicted_stop(p, B, W, M) or MAX_TOKENS for p in PERIODS]


@pytest.mark.integration
def test_repeat_check_stops_a_loop_where_the_period_says(looping_dir: Path) -> None:
    with ModelRunner(looping_dir, max_total_tokens=1024) as runner:
        free = runner.generate_outputs(PROMPTS, SamplingParams(**GREEDY))
        checked = runner.generate_outputs(PROMPTS, SamplingParams(**GREEDY, **CHECK))
        stats = runner.get_stats()
    for p, cycle, out in zip(PERIODS, cycles(), free):  # the model loops, to max_tokens
        loop = cycle[1:] + cycle[:1]  # the prompt ends with cycle[0]
        assert out.token_ids == (loop * MAX_TOKENS)[:MAX_TOKENS], p
        assert out.finish_reason == "length"
    expected = expected_lengths()
    assert expected == [16, 20, 28, 20, 16, MAX_TOKENS]  # period 30 is too long for W=64, b=4
    for p, want, out, ref in zip(PERIODS, expected, checked, free):
        assert len(out.token_ids) == want, p
        assert out.token_ids == ref.token_ids[:want]
        assert out.finish_reason == ("repetition" if want < MAX_TOKENS else "length"), p
    assert stats["repetition.early_exit_count"] == len(PERIODS) - 1
    assert stats["repetition.tokens_saved"] == sum(MAX_TOKENS - n for n in expected)
    assert stats["repetition.finished"] == len(PERIODS) - 1


@pytest.mark.integration
def test_runner_wide_instance_checks_every_request(looping_dir: Path) -> None:
    plugin = RepetitionStop(window=W, block_size=B, min_blocks=M)
    assert plugin.name == "repetition_all"  # beside the built-in "repetition"
    with ModelRunner(looping_dir, max_total_tokens=1024, plugins=[plugin]) as runner:
        outs = runner.generate_outputs(PROMPTS, SamplingParams(**GREEDY))  # no repeat_check
        stats = runner.get_stats()
    expected = expected_lengths()
    assert [len(o.token_ids) for o in outs] == expected
    assert [o.finish_reason for o in outs][:-1] == ["repetition"] * (len(PERIODS) - 1)
    assert stats["repetition_all.early_exit_count"] == len(PERIODS) - 1
    assert stats["repetition_all.tokens_saved"] == sum(MAX_TOKENS - n for n in expected)
    assert stats["repetition.early_exit_count"] == 0  # the built-in one was not asked


@pytest.mark.integration
def test_per_request_instance_and_a_bad_combination(looping_dir: Path) -> None:
    with ModelRunner(looping_dir, max_total_tokens=1024) as runner:
        mine = SamplingParams(
            **GREEDY, plugins=[RepetitionStop(window=W, block_size=B, min_blocks=M)]
        )
        outs = runner.generate_outputs(PROMPTS[1:3], [mine, SamplingParams(**GREEDY)])
        assert [len(o.token_ids) for o in outs] == [expected_lengths()[1], MAX_TOKENS]
        bad = SamplingParams(**GREEDY, plugins=[RepetitionStop(window=100)])  # b=64, m=16
        [out] = runner.generate_outputs([PROMPTS[0]], bad)
        assert out.finish_reason == "error" and "repeat_check_window" in (out.error or "")
    with pytest.raises(ValueError, match="distinct names"):
        ModelRunner(looping_dir, plugins=[RepetitionStop()])  # a second "repetition"
