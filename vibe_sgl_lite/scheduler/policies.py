"""Scheduling policies: each one is only an order of the waiting queue.

The mechanism (budgets, pages, chunks, preemption) is ``Scheduler``'s; a policy overrides
``policy_order`` and nothing else (``order_waiting`` adds the starvation guard on top), so a
research policy is a few lines:

    class ShortestPromptFirst(Scheduler):
        def policy_order(self):
            return sorted(self.waiting, key=lambda r: len(r.token_ids))

    ModelRunner(path, scheduler=ShortestPromptFirst())

| name         | order                                                             |
| ------------ | ----------------------------------------------------------------- |
| ``fcfs``     | arrival                                                           |
| ``lpm``      | longest cached prefix first (SGLang's "longest prefix match")     |
| ``dfs-weight`` | depth-first over the radix tree, heavier subtrees first: requests sharing a prefix run back to back |
| ``priority`` | smaller ``priority`` value first (vLLM's convention), then arrival |
| ``random``   | a seeded shuffle (a baseline for experiments)                     |

**Fallback.** ``lpm`` and ``dfs-weight`` match every waiting prompt against the tree at every
step: ``O(sum of prompt lengths)`` work. Past ``PREFIX_AWARE_MAX_WAITING = 128`` waiting requests
(SGLang's threshold) that cost outgrows what a better order can save, and both fall back to FCFS.

**No starvation.** A request that has waited ``max_wait_steps`` scheduler steps (default 256) goes
ahead of every policy order, oldest first. Every policy therefore admits every request within a
bounded number of steps once memory allows, however the policy ranks it.
"""

from __future__ import annotations

import random
from collections import defaultdict

from vibe_sgl_lite.cache.base import RadixNode
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.scheduler.scheduler import Scheduler

PREFIX_AWARE_MAX_WAITING = 128


class FCFSScheduler(Scheduler):
    """Arrival order: ``Scheduler``'s own ``policy_order``."""


class LPMScheduler(Scheduler):
    """Longest prefix match first: requests that reuse the most cached KV run first."""

    def policy_order(self) -> list[Request]:
        if len(self.waiting) > PREFIX_AWARE_MAX_WAITING:
            return super().policy_order()
        hits = {
            id(r): self.cache.match_prefix(r.cache_key(len(r.token_ids) - 1)).num_tokens
            for r in self.waiting
        }
        return sorted(self.waiting, key=lambda r: (-hits[id(r)], r.arrival_order))


class DFSWeightScheduler(Scheduler):
    """SGLang's cache-aware order: walk the radix tree depth first, heavier subtrees first.

    Each waiting request hangs under the deepest tree node its tokens match. A node's weight is
    the number of waiting requests in its subtree; visiting children by decreasing weight keeps
    requests that share a prefix together, so the shared pages stay cached while they run.
    """

    def policy_order(self) -> list[Request]:
        if len(self.waiting) > PREFIX_AWARE_MAX_WAITING:
            return super().policy_order()
        at_node: dict[int, list[Request]] = defaultdict(list)
        weight: dict[int, int] = defaultdict(int)
        root: RadixNode | None = None
        for req in sorted(self.waiting, key=lambda r: r.arrival_order):
            node = self.cache.match_prefix(req.cache_key(len(req.token_ids) - 1)).node
            at_node[id(node)].append(req)
            for ancestor in node.path():
                weight[id(ancestor)] += 1
                root = ancestor
        order: list[Request] = []

        def visit(node: RadixNode) -> None:
            # Children first, heaviest first, then the node's own requests (SGLang's order):
            # requests with the longest cached prefixes run before those that share less.
            children = [c for c in node.children.values() if weight[id(c)] > 0]
            for child in sorted(children, key=lambda c: -weight[id(c)]):
                visit(child)
            order.extend(at_node[id(node)])

        if root is not None:
            visit(root)
        return order


class PriorityScheduler(Scheduler):

    def policy_order(self) -> list[Request]:
        return sorted(self.waiting, key=lambda r: (r.priority, r.arrival_order))


class RandomScheduler(Scheduler):

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.rng = random.Random(seed)

    def policy_order(self) -> list[Request]:
        order = sorted(self.waiting, key=lambda r: r.arrival_order)
        self.rng.shuffle(order)
        return order
