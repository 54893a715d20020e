"""Prefix cache, chunked prefill and policies through ModelRunner: outputs never change."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.model_factory import hf_greedy, load_hf
from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.cache import RadixCache
from vibe_sgl_lite.scheduler import LPMScheduler, PriorityScheduler

pytestmark = pytest.mark.integration

SYSTEM = list(range(10, 58))  # a 48-token shared "system prompt"
PROMPTS = [SYSTEM + [100 + i, 200 + i, 7 + i] for i in range(6)] + [
    [300, 301, 302, 303, 304],
    SYSTEM[:20] + [5, 6],
]
MAX_NEW = 8
GREEDY = SamplingParams(temperature=0, max_tokens=MAX_NEW, ignore_eos=True)


@pytest.fixture(scope="module")
def reference(qwen3_dir: Path) -> list[list[int]]:
    hf = load_hf(qwen3_dir)
    return [hf_greedy(hf, p, MAX_NEW) for p in PROMPTS]


def run_in_two_waves(runner: ModelRunner) -> list[list[int]]:
    first = runner.generate_outputs(PROMPTS[:3], GREEDY)
    second = runner.generate_outputs(PROMPTS[3:], GREEDY)
    return [o.token_ids for o in first + second]


def assert_all_pages_free_after_flush(runner: ModelRunner) -> None:
    runner.flush_cache()
    stats = runner.get_stats()
    assert stats["kv_pages_free"] == stats["kv_pages_total"]
    assert stats["num_cached_pages"] == 0


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
@pytest.mark.parametrize("page_size", [1, 4])
def test_cache_on_and_off_give_identical_greedy_output(
    qwen3_dir: Path, reference: list[list[int]], chunk: int | None, page_size: int
) -> None:
    for enabled in (True, False):
        with ModelRunner(
            qwen3_dir,
            page_size=page_size,
            max_total_tokens=2048,
            enable_prefix_cache=enabled,
            chunked_prefill_size=chunk,
        ) as runner:
            assert run_in_two_waves(runner) == reference
            stats = runner.get_stats()
            assert (stats["num_cached_tokens"] > 0) == enabled
            assert_all_pages_free_after_flush(runner)


@pytest.mark.parametrize("policy", ["fcfs", "lpm", "dfs-weight", "priority", "random"])
def test_every_policy_gives_identical_greedy_output(
    qwen3_dir: Path, reference: list[list[int]], policy: str
) -> None:
    with ModelRunner(
        qwen3_dir,
        page_size=4,
        max_total_tokens=2048,
        schedule_policy=policy,
        chunked_prefill_size=16,
    ) as runner:
        assert run_in_two_waves(runner) == reference
        assert_all_pages_free_after_flush(runner)


def test_later_request_reuses_earlier_prefix_including_generated_tokens(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=1024) as runner:
        first = runner.generate_outputs(PROMPTS[0], GREEDY)[0]
        assert first.num_cached_tokens == 0
        # Continue the conversation: prompt + the generated tokens + more.
        follow_up = PROMPTS[0] + first.token_ids + [9, 9]
        out = runner.generate_outputs(follow_up, GREEDY)[0]
        computed_before = len(PROMPTS[0]) + len(first.token_ids) - 1  # the last token has no KV
        assert out.num_cached_tokens == (computed_before // 4) * 4
        assert runner.get_stats()["cache_hit_rate"] > 0


def test_prefix_shared_inside_one_batch_is_computed_once(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=1024) as runner:
        outs = runner.generate_outputs(PROMPTS[:4], GREEDY)
        assert [o.num_cached_tokens for o in outs] == [0, 48, 48, 48]
        unique = len(SYSTEM) + 4 * 3
        assert runner.get_stats()["num_prefill_tokens_computed"] == unique


def test_preemption_after_prefix_hits(qwen3_dir: Path, reference: list[list[int]]) -> None:
    """A pool so small that requests holding cached prefixes get preempted and re-admitted."""
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=96, chunked_prefill_size=7) as runner:
        runner.generate_outputs(PROMPTS[0], GREEDY)  # warm the cache with the system prompt
        outs = runner.generate_outputs(PROMPTS, GREEDY)
        assert [o.token_ids for o in outs] == reference
        stats = runner.get_stats()
        assert stats["num_preemptions"] > 0
        assert stats["num_cached_tokens"] > 0
        assert_all_pages_free_after_flush(runner)


def test_eviction_under_a_tiny_pool(qwen3_dir: Path, reference: list[list[int]]) -> None:
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=64) as runner:
        got = []
        for prompt in PROMPTS:  # one at a time: each finished request leaves its pages cached
            got.append(runner.generate_outputs(prompt, GREEDY)[0].token_ids)
        assert got == reference
        assert runner.get_stats()["num_evicted_pages"] > 0
        assert_all_pages_free_after_flush(runner)


def test_seed_api_objects(qwen3_dir: Path, reference: list[list[int]]) -> None:
    with ModelRunner(
        qwen3_dir, max_total_tokens=1024, page_size=4, cache=RadixCache(), scheduler=LPMScheduler()
    ) as runner:
        assert run_in_two_waves(runner) == reference
        assert runner.get_stats()["num_cached_tokens"] > 0


def test_priority_policy_runs_smaller_values_first(qwen3_dir: Path) -> None:
    with ModelRunner(
        qwen3_dir, max_total_tokens=1024, scheduler=PriorityScheduler(), max_running_requests=1
    ) as runner:
        outs = runner.generate_outputs(
            [[5, 6], [7, 8], [9, 10]],
            SamplingParams(temperature=0, max_tokens=2, ignore_eos=True),
            priorities=[3, 1, 2],
        )
        order = sorted(range(3), key=lambda i: outs[i].metrics["queue_time"])
        assert order == [1, 2, 0]


def test_flush_cache_refuses_while_running(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=1024) as runner:
        stream = runner.generate_stream("Once upon a time", max_tokens=20, ignore_eos=True)
        next(stream)
        with pytest.raises(RuntimeError, match="running"):
            runner.flush_cache()
        list(stream)
        assert runner.flush_cache()
        stats = runner.get_stats()
        assert stats["kv_pages_free"] == stats["kv_pages_total"]


def test_stats_include_timings(qwen3_dir: Path) -> None:
    with ModelRunner(qwen3_dir, max_total_tokens=1024) as runner:
        out = runner.generate_outputs("Once upon a time", GREEDY)[0]
        stats = runner.get_stats()
    assert set(out.metrics) == {"queue_time", "time_to_first_token", "time_per_output_token"}
    assert stats["mean_time_to_first_token"] > 0 and stats["mean_time_per_output_token"] > 0


def test_dfs_weight_admits_cached_prefixes_first(qwen3_dir: Path) -> None:
    """Children (cached prefixes) before the root's cold requests, heavier subtrees first."""
    from vibe_sgl_lite.scheduler import DFSWeightScheduler

    scheduler = DFSWeightScheduler()
    with ModelRunner(qwen3_dir, page_size=4, max_total_tokens=1024, scheduler=scheduler) as runner:
        runner.generate_outputs([PROMPTS[0], PROMPTS[6]], GREEDY)  # cache two prefixes
        engine = runner.engine
        assert engine is not None
        cold = engine.add_request([350, 351, 352, 353, 354], GREEDY)
        light = engine.add_request(PROMPTS[6][:4] + [9, 9, 9], GREEDY)
        heavy = [engine.add_request(SYSTEM + [i, i], GREEDY) for i in range(2)]
        assert scheduler.policy_order() == heavy + [light, cold]
        while engine.has_unfinished():
            engine.step()


@pytest.mark.parametrize("chunk", [None, 16, 5])
def test_shared_prefix_in_one_batch_is_computed_once_with_chunking(
    qwen3_dir: Path, reference: list[list[int]], chunk: int | None
) -> None:
    """A request waits while another still prefills the pages they share, then reuses them."""
    with ModelRunner(
        qwen3_dir, page_size=4, max_total_tokens=1024, chunked_prefill_size=chunk
    ) as runner:
        outs = runner.generate_outputs(PROMPTS[:4], GREEDY)
        assert [o.token_ids for o in outs] == reference[:4]
        assert [o.num_cached_tokens for o in outs] == [0, 48, 48, 48]
        assert runner.get_stats()["num_prefill_tokens_computed"] == len(SYSTEM) + 4 * 3
