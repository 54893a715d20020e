"""Per-request sampling parameters, validated once when the request arrives.

A bad value (a typo in an HTTP body, a CLI flag out of range) must fail at submission with a
message that names the field and what it accepts, not deep inside the sampler as a NaN or a
shape error. Every failure here is therefore a ``ValueError`` of the form
``"<field> must be <allowed>, got <value>"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

MAX_LOGPROBS = 20


def _real(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> float:
    """Return ``value`` as a float if it is a finite real number for which ``ok`` holds."""
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and ok(number):
            return number
    raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


def _int(name: str, value: object, allowed: str, ok: Callable[[int], bool]) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) for which ``ok`` holds."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not ok(int(value)):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    return int(value)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r}")
    return value


@dataclass
class SamplingParams:
    """How to pick the next token of one request; see ``Sampler`` for the order of operations.

    ``stop`` and ``stop_token_ids`` accept ``None`` or a single string for convenience and are
    normalised to lists in ``__post_init__``, so downstream code always sees ``list``.
    """

    max_tokens: int = 128
    temperature: float = 1.0
    top_k: int = -1
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        self.max_tokens = _int("max_tokens", self.max_tokens, ">= 1", lambda v: v >= 1)
        self.temperature = _real("temperature", self.temperature, ">= 0", lambda v: v >= 0)
        self.top_k = _int("top_k", self.top_k, ">= 1, or -1/0 to disable", lambda v: v >= -1)
        self.top_p = _real("top_p", self.top_p, "in (0, 1]", lambda v: 0 < v <= 1)
        self.min_p = _real("min_p", self.min_p, "in [0, 1]", lambda v: 0 <= v <= 1)
        self.repetition_penalty = _real(
            "repetition_penalty", self.repetition_penalty, "> 0", lambda v: v > 0
        )
        self.frequency_penalty = _real(
            "frequency_penalty", self.frequency_penalty, "in [-2, 2]", lambda v: -2 <= v <= 2
        )
        self.presence_penalty = _real(
            "presence_penalty", self.presence_penalty, "in [-2, 2]", lambda v: -2 <= v <= 2
        )
        if self.seed is not None:
            self.seed = _int("seed", self.seed, ">= 0 or None", lambda v: v >= 0)
        self.stop = self._normalise_stop(self.stop)
        self.stop_token_ids = self._normalise_stop_token_ids(self.stop_token_ids)
        self.ignore_eos = _bool("ignore_eos", self.ignore_eos)
        if self.logprobs is not None:
            self.logprobs = _int(
                "logprobs",
                self.logprobs,
                f"in [0, {MAX_LOGPROBS}] or None",
                lambda v: 0 <= v <= MAX_LOGPROBS,
            )
        self.skip_special_tokens = _bool("skip_special_tokens", self.skip_special_tokens)

    @staticmethod
    def _normalise_stop(stop: object) -> list[str]:
        items = [stop] if isinstance(stop, str) else [] if stop is None else stop
        if not isinstance(items, (list, tuple)) or not all(isinstance(s, str) and s for s in items):
            allowed = "None, a non-empty string or a list of non-empty strings"
            raise ValueError(f"stop must be {allowed}, got {stop!r}")
        return list(items)

    @staticmethod
    def _normalise_stop_token_ids(ids: object) -> list[int]:
        items = [] if ids is None else ids
        if not isinstance(items, (list, tuple)) or not all(
            isinstance(t, Integral) and not isinstance(t, bool) and int(t) >= 0 for t in items
        ):
            raise ValueError(f"stop_token_ids must be None or a list of integers >= 0, got {ids!r}")
        return [int(t) for t in items]

    @property
    def is_greedy(self) -> bool:
        """Temperature 0 means argmax: no RNG, and top-k/top-p/min-p cannot change the winner."""
        return self.temperature == 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> SamplingParams:
        """Build from untrusted keyword arguments (an API body, CLI flags).

        Unknown names raise ``ValueError`` rather than the dataclass's ``TypeError``, so callers
        handle one exception type for every bad input.
        """
        unknown = sorted(set(kwargs) - set(FIELD_NAMES))
        if unknown:
            raise ValueError(
                f"unknown sampling parameter {unknown[0]!r}; allowed: {', '.join(FIELD_NAMES)}"
            )
        return cls(**kwargs)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))
