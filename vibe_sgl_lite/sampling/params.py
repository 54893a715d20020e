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

from vibe_sgl_lite.sampling.plugins import Plugin
from vibe_sgl_lite.utils.settings import json_arg, json_file_arg, setting, text_file_arg

MAX_LOGPROBS = 20


def _real(name: str, value: object, allowed: str, ok: Callable[[float], bool]) -> float:
    """Return ``value`` as a float if it is a finite real number for which ``ok`` holds."""
    if isinstance(value, Real) and not isinstance(value, bool):
        number = float(value)
        if math.isfinite(number) and ok(number):
            return number
    raise ValueError(f"{name} must be a finite number {allowed}, got {value!r}")


INT64_MAX = 2**63 - 1


def _int(name: str, value: object, allowed: str, ok: Callable[[int], bool]) -> int:
    """Return ``value`` as an int if it is an integer (not a bool) for which ``ok`` holds.

    Integers must also fit in 64 bits (below ``2**63``): they end up in tensors and in
    ``torch.Generator.manual_seed``, where a larger one would fail a whole step, not just
    its request."""
    if isinstance(value, bool) or not isinstance(value, Integral) or not ok(int(value)):
        raise ValueError(f"{name} must be an integer {allowed}, got {value!r}")
    if not -INT64_MAX - 1 <= int(value) <= INT64_MAX:
        raise ValueError(f"{name} must be an integer {allowed} that fits in 64 bits, got {value!r}")
    return int(value)


def _bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool (True or False), got {value!r}")
    return value


def _token_key(key: object) -> object:
    """JSON object keys are strings (OpenAI sends ``{"50256": -100}``): read digits as ints."""
    return int(key) if isinstance(key, str) and key.isdigit() else key


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
    prompt_logprobs: int | None = setting(
        None, "return each prompt token's log-probability and the top-n at its position"
    )
    skip_special_tokens: bool = setting(True, "leave special tokens out of the text")

    # Generation control (sampling/plugins.py and the built-in plugins).
    logit_bias: dict[int, float] | None = setting(
        None, "token id -> bias in [-100, 100] added to its logit (OpenAI)", cli_type=json_arg
    )
    allowed_token_ids: list[int] | None = setting(None, "only these token ids may be sampled")
    bad_words: list[str] | None = setting(None, "words (token sequences) never generated")
    repeat_check: bool = setting(False, "stop when the output loops (finish_reason 'repetition')")
    repeat_check_window: int = setting(1024, "recent tokens scanned for repeated blocks")
    repeat_block_size: int = setting(64, "tokens per block compared by repeat_check")
    repeat_min_blocks: int = setting(16, "identical blocks in the window that stop the request")
    enable_entropy_early_exit: bool = setting(
        False, "stop when the next-token entropy stays low (finish_reason 'entropy')"
    )
    entropy_threshold: float = setting(0.1, "entropy (nats) below which a step counts as low")
    min_tokens_before_exit: int = setting(32, "tokens generated before entropy exit may stop")
    entropy_exit_steps: int = setting(4, "consecutive low-entropy steps that stop the request")
    json_schema: str | dict[str, Any] | None = setting(
        None, "constrain the output to JSON matching this schema", cli_type=json_file_arg
    )
    regex: str | None = setting(None, "constrain the output to match this regular expression")
    grammar: str | None = setting(
        None, "constrain the output to this grammar (Lark/GBNF)", cli_type=text_file_arg
    )
    plugins: list[Plugin] | None = setting(None, "per-request plugins (Python only)", cli=False)
    lora_name: str | None = setting(
        None, "the LoRA adapter to run under, by its loaded name (default: the base model)"
    )

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
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _int(
                "prompt_logprobs",
                self.prompt_logprobs,
                f"in [0, {MAX_LOGPROBS}] or None",
                lambda v: 0 <= v <= MAX_LOGPROBS,
            )
        self.skip_special_tokens = _bool("skip_special_tokens", self.skip_special_tokens)
        if self.lora_name is not None and (
            not isinstance(self.lora_name, str) or not self.lora_name
        ):
            raise ValueError(
                f"lora_name must be a non-empty string or None, got {self.lora_name!r}"
            )
        self._check_controls()

    def _check_controls(self) -> None:
        """The generation-control fields (ranges that need no vocabulary; the plugins check
        token ids and compile grammars when the engine queues the request)."""
        if self.logit_bias is not None:
            if not isinstance(self.logit_bias, dict):
                raise ValueError(
                    f"logit_bias must be a dict {{token_id: bias}}, got {self.logit_bias!r}"
                )
            self.logit_bias = {
                _int("logit_bias token id", _token_key(k), ">= 0", lambda v: v >= 0): _real(
                    f"logit_bias[{k}]", v, "in [-100, 100]", lambda b: -100 <= b <= 100
                )
                for k, v in self.logit_bias.items()
            }
        if self.allowed_token_ids is not None:
            ids = self.allowed_token_ids
            if not isinstance(ids, (list, tuple)) or not ids:
                raise ValueError(
                    f"allowed_token_ids must be a non-empty list of token ids, got {ids!r}"
                )
            self.allowed_token_ids = [
                _int("allowed_token_ids", t, ">= 0", lambda v: v >= 0) for t in ids
            ]
        if self.bad_words is not None:
            words = self.bad_words
            if not isinstance(words, (list, tuple)) or not all(
                isinstance(w, str) and w for w in words
            ):
                raise ValueError(f"bad_words must be a list of non-empty strings, got {words!r}")
            self.bad_words = list(words)
        self.repeat_check = _bool("repeat_check", self.repeat_check)
        self.repeat_block_size = _int(
            "repeat_block_size", self.repeat_block_size, ">= 1", lambda v: v >= 1
        )
        self.repeat_min_blocks = _int(
            "repeat_min_blocks", self.repeat_min_blocks, ">= 2", lambda v: v >= 2
        )
        need = self.repeat_block_size * self.repeat_min_blocks
        self.repeat_check_window = _int(
            "repeat_check_window",
            self.repeat_check_window,
            f">= repeat_block_size * repeat_min_blocks ({need})",
            lambda v: v >= need,
        )
        self.enable_entropy_early_exit = _bool(
            "enable_entropy_early_exit", self.enable_entropy_early_exit
        )
        self.entropy_threshold = _real(
            "entropy_threshold", self.entropy_threshold, "> 0", lambda v: v > 0
        )
        self.min_tokens_before_exit = _int(
            "min_tokens_before_exit", self.min_tokens_before_exit, ">= 0", lambda v: v >= 0
        )
        self.entropy_exit_steps = _int(
            "entropy_exit_steps", self.entropy_exit_steps, ">= 1", lambda v: v >= 1
        )
        constraints = [
            n for n in ("json_schema", "regex", "grammar") if getattr(self, n) is not None
        ]
        if len(constraints) > 1:
            raise ValueError(
                f"json_schema, regex and grammar are exclusive; got {', '.join(constraints)}"
            )
        if self.json_schema is not None and not isinstance(self.json_schema, (str, dict)):
            raise ValueError(
                f"json_schema must be a JSON string or a dict, got {self.json_schema!r}"
            )
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")
        if self.plugins is not None:
            if not isinstance(self.plugins, (list, tuple)) or not all(
                isinstance(p, Plugin) for p in self.plugins
            ):
                raise ValueError(f"plugins must be a list of Plugin objects, got {self.plugins!r}")
            self.plugins = list(self.plugins)

    @property
    def structured(self) -> bool:
        """Whether a json_schema, regex or grammar constrains the output."""
        return self.json_schema is not None or self.regex is not None or self.grammar is not None

    @property
    def needs_plugins(self) -> bool:
        """Whether a built-in plugin acts on this request (``sampling/builtin.py``), or it
        brings plugins of its own. When not, and the runner has none of its own, the engine
        never enters ``sampling/plugins.py`` for it: unused generation control costs nothing."""
        return bool(
            self.logit_bias
            or self.allowed_token_ids
            or self.bad_words
            or self.repeat_check
            or self.enable_entropy_early_exit
            or self.structured
            or self.plugins
        )

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
