"""``ThroughputGuard``: speculate only where it measurably pays, on this machine, now.

Whether a verify row pays depends on the model, the machine and the batch: on a large model a
row of 5 tokens costs about one decode (the weights are read once), on a tiny one it can cost
1.5x (the step is all per-op overhead), and at batch 16 the products are compute-bound. So
instead of a fixed threshold the guard measures: per batch-size bucket (1, 2-3, 4-7, ...), a
moving average of decode tokens per second for steps that speculated and for steps that did
not, timed from one ``plan`` to the next (the whole step: drafting, forward, verification).

    bucket   spec tok/s   plain tok/s   -> mode
    1        410          230              speculate
    4        520          640              plain (speculating loses here)

Each bucket starts speculating, tries plain once it has a few speculative samples, then keeps
the faster mode and re-measures the slower one every ``PROBE_EVERY`` steps (load and context
length drift). It decides for greedy requests only: their output does not depend on whether
they speculated. A sampled request draws different random numbers with and without drafts, so
a timing-based choice would make seeded output depend on timing; sampled requests follow the
deterministic rules alone (``Speculator.plan``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

SMOOTHING = 0.2
MIN_SAMPLES = 3
PROBE_EVERY = 24


@dataclass
class _Bucket:
    rate: dict[bool, float] = field(default_factory=dict)  # speculate? -> tokens/s (EMA)
    samples: dict[bool, int] = field(default_factory=lambda: {True: 0, False: 0})
    steps: int = 0


class ThroughputGuard:
    def __init__(self) -> None:
        self.buckets: dict[int, _Bucket] = {}
        self._open: tuple[_Bucket, bool, float] | None = None  # bucket, mode, step start

    @staticmethod
    def bucket_of(batch: int) -> int:
        return max(batch, 1).bit_length()  # 1, 2-3, 4-7, 8-15, ...

    def choose(self, batch: int) -> bool:
        """Whether greedy requests speculate in this step of ``batch`` decoding requests;
        starts timing the step."""
        bucket = self.buckets.setdefault(self.bucket_of(batch), _Bucket())
        bucket.steps += 1
        if bucket.samples[True] < MIN_SAMPLES:
            mode = True
        elif bucket.samples[False] < MIN_SAMPLES:
            mode = False
        else:
            better = bucket.rate[True] >= bucket.rate[False]
            mode = (not better) if bucket.steps % PROBE_EVERY == 0 else better
        self._open = (bucket, mode, time.perf_counter())
        return mode

    def record(self, tokens: int) -> None:
        """The step ended having produced ``tokens`` decode tokens (accepted drafts included)."""
        if self._open is None or tokens <= 0:
            return
        bucket, mode, start = self._open
        rate = tokens / max(time.perf_counter() - start, 1e-9)
        old = bucket.rate.get(mode)
        bucket.rate[mode] = rate if old is None else old + SMOOTHING * (rate - old)
        bucket.samples[mode] += 1
        self._open = None

    def discard(self) -> None:
        """The step also prefilled: its time says nothing about decoding."""
        self._open = None

    def modes(self) -> dict[int, bool]:
        """The mode each measured bucket would choose now (for stats and tests)."""
        return {
            key: b.rate[True] >= b.rate[False]
            for key, b in self.buckets.items()
            if True in b.rate and False in b.rate
        }
