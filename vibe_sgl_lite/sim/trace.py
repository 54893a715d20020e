"""Traces: when requests arrive and how long their prompts and outputs are.

A trace is a CSV with one row per request (the Azure LLM inference trace 2023's columns)::

    TIMESTAMP,ContextTokens,GeneratedTokens
    2023-11-16 18:15:46.6805900,374,44

``TIMESTAMP`` is a date-time or a number of seconds; rows must be in arrival order. The trace
holds lengths only, no text, so ``build_prompts`` makes token ids: a share of the requests
(``prefix_share``) start with one of a few "system prompts" (``num_prefixes`` of them, each
``prefix_len`` tokens or the prompt's length if shorter), the rest of every prompt is unique.
That is what the prefix cache and the prefix-aware policies see.

Every problem is one ``ValueError`` line naming the file, the row (1-based, header = row 1)
and the field.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace: arrival in seconds from the trace's start, and its lengths."""

    arrival: float
    prompt_len: int
    output_len: int


@dataclass(frozen=True)
class PromptSpec:
    """How ``build_prompts`` makes token ids: shared prefixes and the vocabulary they come from."""

    prefix_share: float = 0.0
    num_prefixes: int = 8
    prefix_len: int = 512
    vocab_size: int = 4096
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.prefix_share <= 1.0:
            raise ValueError(f"prefix_share must be in [0, 1], got {self.prefix_share!r}")
        for name in ("num_prefixes", "prefix_len", "vocab_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text.strip()[:26]).timestamp()


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace CSV (the first ``limit`` rows); arrivals start at 0 seconds."""
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the trace ({exc.strerror})") from None
    out: list[TraceRequest] = []
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (need {COLUMNS})")
        start = None
        for row_no, row in enumerate(reader, start=2):
            if limit is not None and len(out) >= limit:
                break
            out.append(_parse_row(path, row_no, row, start))
            if start is None:
                start = _seconds(row["TIMESTAMP"])
                out[-1] = replace(out[-1], arrival=0.0)
            if len(out) > 1 and out[-1].arrival < out[-2].arrival:
                raise ValueError(
                    f"{path}: row {row_no}: TIMESTAMP goes back in time (rows must be sorted)"
                )
    if not out:
        raise ValueError(f"{path}: the trace has no requests")
    return out


def _parse_row(path: Path, row_no: int, row: dict[str, str], start: float | None) -> TraceRequest:
    try:
        stamp = _seconds(row["TIMESTAMP"])
    except (ValueError, TypeError):
        raise ValueError(f"{path}: row {row_no}: TIMESTAMP {row['TIMESTAMP']!r} is not a time")
    lengths = []
    for field, minimum in (("ContextTokens", 1), ("GeneratedTokens", 0)):
        try:
            value = int(row[field])
        except (ValueError, TypeError):
            raise ValueError(f"{path}: row {row_no}: {field} {row[field]!r} is not an integer")
        if value < minimum:
            raise ValueError(f"{path}: row {row_no}: {field} must be >= {minimum}, got {value}")
        lengths.append(value)
    # An engine always produces at least one token: a 0-token output counts as one.
    return TraceRequest(stamp - (start or stamp), lengths[0], max(1, lengths[1]))


def scale_trace(
    trace: Sequence[TraceRequest],
    rate_scale: float = 1.0,
    length_scale: float = 1.0,
    max_len: int | None = None,
) -> list[TraceRequest]:
    """Arrivals ``rate_scale`` times as fast (2.0: twice the load), lengths times
    ``length_scale`` and cut so that prompt + output <= ``max_len`` (a small model's limit)."""
    if not rate_scale > 0:
        raise ValueError(f"rate_scale must be > 0, got {rate_scale!r}")
    if not length_scale > 0:
        raise ValueError(f"length_scale must be > 0, got {length_scale!r}")
    out = []
    for r in trace:
        prompt = max(1, round(r.prompt_len * length_scale))
        output = max(1, round(r.output_len * length_scale))
        if max_len is not None:
            prompt = min(prompt, max_len - 1)
            output = min(output, max_len - prompt)
        out.append(TraceRequest(r.arrival / rate_scale, prompt, output))
    return out


def window(trace: Sequence[TraceRequest], start: float, seconds: float) -> list[TraceRequest]:
    """The requests arriving in ``[start, start + seconds)``, arrivals shifted to begin at 0."""
    return [
        replace(r, arrival=r.arrival - start) for r in trace if start <= r.arrival < start + seconds
    ]


def peak_window(trace: Sequence[TraceRequest], seconds: float) -> float:
    """Start of the ``seconds``-long window with the most arrivals (the trace's peak)."""
    best, best_start, j = 0, 0.0, 0
    for i, r in enumerate(trace):
        while trace[j].arrival < r.arrival - seconds:
            j += 1
        if i - j + 1 > best:
            best, best_start = i - j + 1, max(0.0, r.arrival - seconds)
    return best_start


class PromptBuilder:
    """Token ids of request ``i``'s prompt, made on demand (an hour of prompts is ~22M ids).

    Deterministic in ``(spec.seed, i)``: the simulator and the real engine replaying the same
    slice see the same ids, so the prefix cache matches the same tokens in both. The ids are
    references into one ``vocab`` list, so a prompt costs 8 bytes a token.
    """

    def __init__(self, spec: PromptSpec) -> None:
        self.spec = spec
        self.vocab = list(range(1, spec.vocab_size))
        rng = random.Random(spec.seed)
        self.prefixes = [
            rng.choices(self.vocab, k=spec.prefix_len) for _ in range(spec.num_prefixes)
        ]

    def __call__(self, index: int, request: TraceRequest) -> list[int]:
        rng = random.Random(self.spec.seed * 1_000_003 + index)
        shared: list[int] = []
        if rng.random() < self.spec.prefix_share:
            shared = rng.choice(self.prefixes)[: request.prompt_len - 1]  # >= 1 token its own
        return shared + rng.choices(self.vocab, k=request.prompt_len - len(shared))
