"""Per-request sampling parameters, validated once when the request arrives.

A bad value (a typo in an HTTP body, a CLI flag out of range) must fail at submission with a
message that names the field and what it accepts, not deep inside the sampler as a NaN or a
shape error. Every failure here is therefore a ``ValueError`` of the form
``"<field> must be <allowed>, got <value>"``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

from vibe_sgl_lite.utils.settings import setting

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

    max_tokens: int = setting(128, "most tokens to generate")
    temperature: float = setting(1.0, "softmax temperature; 0 = greedy (argmax)")
    top_k: int = setting(-1, "keep the k most likely tokens; -1 or 0 = all")
    top_p: float = setting(1.0, "keep the smallest set of tokens with this total probability")
    min_p: float = setting(0.0, "drop tokens less likely than min_p times the most likely")
    repetition_penalty: float = setting(1.0, "divide logits of seen tokens (HF semantics)")
    frequency_penalty: float = setting(0.0, "subtract per occurrence in the output (OpenAI)")
    presence_penalty: float = setting(0.0, "subtract once if present in the output (OpenAI)")
    seed: int | None = setting(None, "seed of this request's sampling")
    stop: str | list[str] | None = setting(None, "stop string(s), cut from the text")
    stop_token_ids: list[int] | None = setting(None, "token ids that end the request")
    ignore_eos: bool = setting(False, "keep generating after an end-of-sequence token")
    logprobs: int | None = setting(None, "return the top-n log-probabilities of each token")
    skip_special_tokens: bool = setting(True, "leave special tokens out of the text")

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
    def stop_strings(self) -> list[str]:
        """``stop`` as a list (``__post_init__`` normalises it; this keeps the type honest)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def validated_copy(self) -> SamplingParams:
        """A copy checked again from scratch: what the engine keeps for a request.

        A dataclass can be changed after construction (``params.top_p = 2.0``); copying at
        enqueue time re-runs every check and gives the request parameters that later changes to
        the caller's object cannot reach.
        """
        return dataclasses.replace(self)

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
