"""The priority policy's order, and the starvation guard on top of it, seen through the engine.

``max_running_requests=1`` makes admission order observable: one request runs at a time, to the
end, so the order in which ``engine.step()`` returns finished requests is the order in which
they were admitted. Requests are compared by identity (the handles ``add_request`` returns), so
nothing here depends on timing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.scheduler import PriorityScheduler

pytestmark = pytest.mark.integration

# Prompts of unrelated lengths and contents: an order by length (either way), by token ids or by
# reversed arrival cannot coincide with arrival order.
PROMPTS = [
    [11, 12, 13, 14, 15],
    [21, 22, 23, 24, 25, 26, 27, 28, 29],
    [31, 32],
    [41, 42, 43, 44, 45, 46, 47],
    [51, 52, 53],
    [61, 62, 63, 64, 65, 66, 67, 68],
]
SHORT = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)


def _runner(model_dir: Path) -> ModelRunner:
    return ModelRunner(
        model_dir,
        schedule_policy="priority",
        max_running_requests=1,
        page_size=4,
        max_total_tokens=256,
    )


@pytest.fixture()
def runner(qwen3_dir: Path) -> Iterator[ModelRunner]:
    with _runner(qwen3_dir) as r:
        assert isinstance(r.engine.scheduler, PriorityScheduler)
        yield r


def _finish_order(runner: ModelRunner, priorities: list[int]) -> list[int]:
    """Indices of ``PROMPTS`` in the order their requests finished (= were admitted)."""
    engine: Any = runner.engine
    requests = [engine.add_request(p, SHORT, priority=q) for p, q in zip(PROMPTS, priorities)]
    finished: list[Any] = []
    while engine.has_unfinished():
        finished.extend(engine.step())
    return [next(i for i, r in enumerate(requests) if r is f) for f in finished]


@pytest.mark.parametrize(
    "priorities, expected",
    [
        # equal priorities: arrival order, whatever the prompts look like
        ([0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5]),
        ([7, 7, 7, 7, 7, 7], [0, 1, 2, 3, 4, 5]),
        # smaller value first, arrival order within each priority
        ([1, 0, 1, 0, 2, 0], [1, 3, 5, 0, 2, 4]),
        ([-1, 3, 3, -1, 3, -1], [0, 3, 5, 1, 2, 4]),
    ],
)
def test_priority_policy_serves_ties_in_arrival_order(
    runner: ModelRunner, priorities: list[int], expected: list[int]
) -> None:
    assert _finish_order(runner, priorities) == expected


# --- the starvation guard -------------------------------------------------------------------

MAX_WAIT = 8  # instead of the default 256, so the test runs a few dozen steps
HIGH_TOKENS = 3  # each high-priority request holds the only slot for 3 steps
BURST = 4  # high-priority requests that arrive right after the low one
LOW = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
HIGH = SamplingParams(temperature=0, max_tokens=HIGH_TOKENS, ignore_eos=True)
# The low-priority request is overdue after MAX_WAIT steps; then it waits at most for the slot
# to free (HIGH_TOKENS steps) and runs its own LOW.max_tokens steps.
BOUND = MAX_WAIT + HIGH_TOKENS + LOW.max_tokens


def _steps_until_low_finishes(runner: ModelRunner, max_wait_steps: int, steps: int) -> int | None:
    """Add one low-priority request and a burst of high-priority ones behind it, then a new
    high-priority request before every step, for at most ``steps`` steps; the step at which the
    low one finished, or None.

    The burst is overdue together with the low request: the guard must take the overdue oldest
    first, not by priority again (which would starve the low one just the same)."""
    engine: Any = runner.engine
    engine.scheduler.max_wait_steps = max_wait_steps
    low = engine.add_request([90, 91, 92, 93, 94], LOW, priority=10)
    for i in range(BURST):
        engine.add_request([70 + i, 6, 7, 8], HIGH, priority=0)
    for step in range(1, steps + 1):
        engine.add_request([5 + step % 40, 6, 7, 8], HIGH, priority=0)
        # the stream never runs dry: whenever the slot frees, a high-priority request waits
        assert any(r is not low for r in engine.scheduler.waiting)
        if any(r is low for r in engine.step()):
            return step
    assert low in engine.scheduler.waiting  # never even admitted
    return None


def test_starvation_guard_admits_a_low_priority_request_under_a_stream_of_high_ones(
    runner: ModelRunner,
) -> None:
    finished_at = _steps_until_low_finishes(runner, MAX_WAIT, steps=4 * BOUND)
    assert finished_at is not None and finished_at <= BOUND, finished_at
    assert finished_at > MAX_WAIT  # not earlier: before that, priority decided


def test_without_the_guard_the_low_priority_request_starves(qwen3_dir: Path) -> None:
    """The control: the same stream with the guard out of reach never admits it in the window
    the guarded run needed (so the guarded test above measures the guard, not luck)."""
    with _runner(qwen3_dir) as runner:
        assert _steps_until_low_finishes(runner, 10**9, steps=4 * BOUND) is None
