"""Token pruning frees a fully pruned page only when the request is its only holder.

Two requests share a 32-token prompt prefix through the prefix cache and prune hard while they
decode. The pages of that prefix are held by the cache (and the other request), so pruning may
only stop reading them: ``num_pruned_pages_freed`` must count exactly the pages that went back
to the free list, step by step, and a later request on the same prefix must read the prefix's
K/V unchanged (greedy output equal to an engine that never prunes).

Written against ``ModelRunner``'s public surface (settings, a plugin, ``get_stats``, outputs)
so that it survives moving the pruning plumbing out of the engine; the page accounting it reads
is in ``pages_and_count`` alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from vibe_sgl_lite import ModelRunner, SamplingParams
from vibe_sgl_lite.sampling.plugins import Plugin, PluginRow

pytestmark = pytest.mark.integration

PAGE = 4
SHARED = list(range(10, 42))  # 8 full pages, cached while the first request prefills
PROMPTS = [SHARED + [100, 101, 102, 103], SHARED + [104, 105, 106, 107]]
LONG = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
LATER = SHARED + [108, 109]
# Two tokens: the second is sampled in a decode step that reads the shared pages, and pruning
# only acts on the steps after it, so this request's own pruning cannot change its output.
SHORT = SamplingParams(temperature=0, max_tokens=2, ignore_eos=True)
SETTINGS: dict[str, Any] = dict(page_size=PAGE, max_total_tokens=1024, enable_prefix_cache=True)


def pages_and_count(runner: ModelRunner) -> tuple[int, int]:
    """(pages on the allocator's free list, ``num_pruned_pages_freed`` so far)."""
    stats = runner.get_stats()
    return int(stats["kv_pages_free"]), int(stats["num_pruned_pages_freed"])


class FreeListProbe(Plugin):
    """Records, per step, how many pages returned to the free list and how many the counter
    says pruning freed, between the logits hook and the token hook: the engine prunes after
    sampling and before the plugins see the sampled tokens, and nothing else allocates or frees
    pages in between."""

    name = "free_list_probe"

    def __init__(self) -> None:
        self.runner: ModelRunner | None = None
        self._before: tuple[int, int] | None = None
        self.steps: list[tuple[int, int]] = []  # (pages returned, counter increase) per step

    def process_logits(self, logits: torch.Tensor, rows: Sequence[PluginRow]) -> torch.Tensor:
        assert self.runner is not None
        self._before = pages_and_count(self.runner)
        return logits

    def after_token(self, rows: Sequence[PluginRow], tokens: Sequence[int]) -> list[str | None]:
        assert self.runner is not None and self._before is not None
        (free0, count0), (free1, count1) = self._before, pages_and_count(self.runner)
        self.steps.append((free1 - free0, count1 - count0))
        return [None] * len(rows)


def test_pruning_counts_only_pages_returned_and_keeps_shared_pages(
    qwen3_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIBE_SGL_LITE_CHECK_INVARIANTS", "1")
    with ModelRunner(qwen3_dir, **SETTINGS) as plain:
        expected = plain.generate_outputs(LATER, SHORT)[0].token_ids

    probe = FreeListProbe()
    with ModelRunner(
        qwen3_dir, pruning_ratio=0.9, min_tokens_after_pruning=8, plugins=[probe], **SETTINGS
    ) as runner:
        probe.runner = runner
        outs = runner.generate_outputs(PROMPTS, LONG)
        stats = runner.get_stats()
        assert [len(o.token_ids) for o in outs] == [LONG.max_tokens] * len(PROMPTS)
        assert max(o.num_cached_tokens for o in outs) >= len(SHARED)  # the prefix was shared
        freed = stats["num_pruned_pages_freed"]
        # the request's own (generated) pages do go back, and the counter says exactly which
        assert freed > 0
        assert [returned for returned, _ in probe.steps] == [n for _, n in probe.steps]
        assert sum(returned for returned, _ in probe.steps) == freed
        # far more tokens were pruned than the freed pages held: the rest sit in pages that
        # are kept (shared prompt pages, or pages not yet wholly pruned)
        assert stats["num_pruned_tokens"] > freed * PAGE

        later = runner.generate_outputs(LATER, SHORT)[0]
        assert later.num_cached_tokens >= len(SHARED)
        assert later.token_ids == expected

        runner.flush_cache()
        free, _ = pages_and_count(runner)
        assert free == runner.get_stats()["kv_pages_total"]
