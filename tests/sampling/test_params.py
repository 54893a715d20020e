"""Validation of ``SamplingParams``: every bad value is a ``ValueError`` that names its field."""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import pytest

from vibe_sgl_lite.sampling import FIELD_NAMES, SamplingParams

pytestmark = pytest.mark.unit

INVALID: list[tuple[str, Any]] = [
    ("max_tokens", 0),
    ("max_tokens", -3),
    ("max_tokens", 1.0),
    ("max_tokens", True),
    ("max_tokens", "10"),
    ("temperature", -1),
    ("temperature", -1e-9),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", "hot"),
    ("temperature", None),
    ("temperature", True),
    ("top_k", -2),
    ("top_k", 2.0),
    ("top_k", False),
    ("top_p", 0.0),
    ("top_p", -0.1),
    ("top_p", 1.0001),
    ("top_p", math.nan),
    ("min_p", -0.01),
    ("min_p", 1.5),
    ("min_p", math.inf),
    ("repetition_penalty", 0.0),
    ("repetition_penalty", -1.0),
    ("repetition_penalty", math.inf),
    ("frequency_penalty", 2.01),
    ("frequency_penalty", -2.01),
    ("frequency_penalty", math.nan),
    ("presence_penalty", 3),
    ("presence_penalty", -math.inf),
    ("presence_penalty", "0.5"),
    ("seed", -1),
    ("seed", 1.5),
    ("seed", "42"),
    ("stop", ""),
    ("stop", ["ok", ""]),
    ("stop", [1]),
    ("stop", 5),
    ("stop_token_ids", [-1]),
    ("stop_token_ids", [1.0]),
    ("stop_token_ids", [True]),
    ("stop_token_ids", 7),
    ("ignore_eos", 1),
    ("ignore_eos", "yes"),
    ("logprobs", -1),
    ("logprobs", 21),
    ("logprobs", 1.0),
    ("prompt_logprobs", -1),
    ("prompt_logprobs", 21),
    ("prompt_logprobs", True),
    ("skip_special_tokens", None),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_value_is_a_value_error_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError) as info:
        SamplingParams(**{field: value})
    assert str(info.value).startswith(f"{field} must be ")
    assert repr(value) in str(info.value)


def test_message_states_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"temperature must be a finite number >= 0, got -1$"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match=r"top_p must be .*in \(0, 1\], got 1.5$"):
        SamplingParams(top_p=1.5)


VALID_EDGES: list[tuple[str, Any]] = [
    ("max_tokens", 1),
    ("temperature", 0),
    ("temperature", 100.0),
    ("top_k", -1),
    ("top_k", 0),
    ("top_k", 1),
    ("top_p", 1.0),
    ("top_p", 1e-6),
    ("min_p", 0.0),
    ("min_p", 1.0),
    ("repetition_penalty", 1e-3),
    ("frequency_penalty", -2.0),
    ("frequency_penalty", 2),
    ("presence_penalty", -2),
    ("presence_penalty", 2.0),
    ("seed", 0),
    ("logprobs", 0),
    ("logprobs", 20),
    ("prompt_logprobs", 0),
    ("prompt_logprobs", 20),
]


@pytest.mark.parametrize(("field", "value"), VALID_EDGES)
def test_boundary_values_are_accepted_unchanged(field: str, value: Any) -> None:
    assert getattr(SamplingParams(**{field: value}), field) == value


def test_defaults() -> None:
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.min_p) == (128, 1.0, -1, 1.0, 0.0)
    assert (p.repetition_penalty, p.frequency_penalty, p.presence_penalty) == (1.0, 0.0, 0.0)
    assert (p.seed, p.stop, p.stop_token_ids, p.logprobs) == (None, [], [], None)
    assert p.ignore_eos is False and p.skip_special_tokens is True
    assert not p.is_greedy


def test_numbers_are_normalised_to_float() -> None:
    p = SamplingParams(temperature=2, top_p=1, repetition_penalty=3)
    assert [type(v) for v in (p.temperature, p.top_p, p.repetition_penalty)] == [float] * 3


@pytest.mark.parametrize(
    ("stop", "expected"),
    [(None, []), ("###", ["###"]), (["a", "bc"], ["a", "bc"]), (("x",), ["x"])],
)
def test_stop_is_normalised_to_a_list(stop: Any, expected: list[str]) -> None:
    assert SamplingParams(stop=stop).stop == expected


def test_stop_token_ids_are_normalised_to_a_list() -> None:
    assert SamplingParams(stop_token_ids=None).stop_token_ids == []
    assert SamplingParams(stop_token_ids=[3, 0]).stop_token_ids == [3, 0]


@pytest.mark.parametrize(("temperature", "greedy"), [(0, True), (0.0, True), (1e-5, False)])
def test_is_greedy(temperature: float, greedy: bool) -> None:
    assert SamplingParams(temperature=temperature).is_greedy is greedy


def test_from_kwargs_builds_validated_params() -> None:
    p = SamplingParams.from_kwargs(temperature=0.5, stop="END")
    assert (p.temperature, p.stop) == (0.5, ["END"])
    with pytest.raises(ValueError, match="^top_k must be"):
        SamplingParams.from_kwargs(top_k=-7)


def test_from_kwargs_rejects_unknown_names_with_value_error() -> None:
    with pytest.raises(ValueError) as info:
        SamplingParams.from_kwargs(temperature=0.5, foo=1)
    message = str(info.value)
    assert message.startswith("unknown sampling parameter 'foo'; allowed: ")
    assert all(name in message for name in FIELD_NAMES)


def test_field_names_list_every_field_in_order() -> None:
    assert FIELD_NAMES == tuple(f.name for f in fields(SamplingParams))
    assert FIELD_NAMES[:3] == ("max_tokens", "temperature", "top_k")


@pytest.mark.parametrize("name", ["top_k", "seed", "max_tokens", "repeat_check_window"])
def test_integers_beyond_64_bits_are_refused(name: str) -> None:
    """They would overflow a tensor or the generator's seed and fail a whole step."""
    with pytest.raises(ValueError, match=f"{name} must be an integer .* fits in 64 bits"):
        SamplingParams(**{name: 2**63})
