"""One owner of ``Request.state``: the scheduler sets WAITING, RUNNING and FINISHED; the output
processor only records why a request ended. Checked on every way out of the engine."""

from __future__ import annotations

from pathlib import Path

import pytest

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.scheduler import RequestState

pytestmark = pytest.mark.integration


def test_every_way_out_is_finished_by_the_scheduler(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=256) as runner:
        engine = runner.engine
        assert engine is not None
        waiting = engine.add_request("hello", SamplingParams(max_tokens=4))
        assert waiting.state is RequestState.WAITING
        engine.abort(waiting)  # never admitted
        assert (waiting.state, waiting.finish_reason) == (RequestState.FINISHED, "abort")

        running = engine.add_request("hello there", SamplingParams(max_tokens=50))
        engine.step()
        assert running.state is RequestState.RUNNING
        engine.abort(running)  # mid-generation: pages back, then finished
        assert (running.state, running.finish_reason) == (RequestState.FINISHED, "abort")

        done = engine.add_request("hello", SamplingParams(max_tokens=2, ignore_eos=True))
        while not done.is_finished:
            engine.step()
        assert done.finish_reason == "length" and done not in engine.scheduler.running
        engine.assert_invariants()
