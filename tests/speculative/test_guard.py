"""``ThroughputGuard``: keeps the faster mode per batch-size bucket, probes the other one."""

from __future__ import annotations

import pytest

from vibe_sgl_lite.speculative import guard as guard_module
from vibe_sgl_lite.speculative.guard import MIN_SAMPLES, PROBE_EVERY, ThroughputGuard


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("spec_faster", [True, False])
def test_the_faster_mode_wins_and_the_slower_is_probed(
    monkeypatch: pytest.MonkeyPatch, spec_faster: bool
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(guard_module.time, "perf_counter", clock)
    guard = ThroughputGuard()
    # speculative steps: 3 tokens per 10 ms; plain steps: 1 token per 4 ms (or 2 per 4 ms)
    plain_tokens = 1 if spec_faster else 2
    chosen = []
    for _ in range(3 * PROBE_EVERY):
        mode = guard.choose(1)
        chosen.append(mode)
        clock.now += 0.010 if mode else 0.004
        guard.record(3 if mode else plain_tokens)
    assert chosen[: 2 * MIN_SAMPLES] == [True] * MIN_SAMPLES + [False] * MIN_SAMPLES
    settled = chosen[2 * MIN_SAMPLES :]
    majority = sum(settled) > len(settled) / 2
    assert majority == spec_faster
    assert 0 < settled.count(not spec_faster) <= len(settled) // PROBE_EVERY + 1  # probes only
    assert guard.modes() == {1: spec_faster}


def test_buckets_are_independent_and_prefill_steps_are_not_measured(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = FakeClock()
    monkeypatch.setattr(guard_module.time, "perf_counter", clock)
    guard = ThroughputGuard()
    guard.choose(5)
    clock.now += 100.0
    guard.discard()  # a prefill step: ignored
    assert guard.buckets[guard.bucket_of(5)].samples == {True: 0, False: 0}
    assert guard.bucket_of(1) != guard.bucket_of(2) == guard.bucket_of(3) != guard.bucket_of(4)
