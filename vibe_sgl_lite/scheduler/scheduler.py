"""Continuous batching: which requests run in the next step, and how many tokens each computes.

Every step (``schedule``) has two phases:

1. **Running requests**, oldest first. A request whose prompt is fully computed decodes one
   token; one still in prefill (chunked prefill) computes its next chunk. If the pool has no page
   for it, the prefix cache gives back unused pages first; failing that, the most recently
   admitted request is **preempted**: its pages are freed and it waits again, to be recomputed
   from its prompt and the tokens it had already produced (greedy output does not change).
2. **Waiting requests**, in the policy's order (``order_waiting``), are admitted while there is a
   free running slot, prefill budget (``max_prefill_tokens`` per step) and pages. An admitted
   request first reuses the longest cached prefix of its tokens; one whose shared prefix another
   request is still prefilling (in chunks) waits for it instead of computing it twice.

Subclasses only choose the order of the waiting queue (``scheduler/policies.py``); the
mechanism (budgets, pages, chunks, preemption) lives here, once.

Starvation: ``order_waiting`` puts every request that has waited ``max_wait_steps`` steps first,
oldest first, whatever the policy says (see ``scheduler/policies.py``). With LoRA, admission also
keeps the running adapters within the workers' slots (``scheduler/adapter_budget.py``); the
statistics and the page-ownership check live in ``scheduler/accounting.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.cache.base import NoPrefixCache, PrefixCache, PrefixMatch
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.scheduler.accounting import check_page_holders, scheduler_stats
from vibe_sgl_lite.scheduler.adapter_budget import AdapterBudget
from vibe_sgl_lite.scheduler.request import FREED_PAGE, Request, RequestState


@dataclass
class ScheduledBatch:
    """The outcome of one ``schedule`` call: ``requests[i]`` computes ``num_new_tokens[i]``."""

    requests: list[Request] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    preempted: list[Request] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # num_computed_tokens before (``rows``)

    def __len__(self) -> int:
        return len(self.requests)


class Scheduler:
    """FCFS continuous batching with chunked prefill, prefix reuse and preemption."""

    max_wait_steps = 256

    def __init__(self) -> None:
        self.num_steps = 0
        self.waiting: list[Request] = []
        self.running: list[Request] = []  # admission order: the last one is preempted first
        self.num_preemptions = 0
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache at admission
        self.num_admitted_tokens = 0  # tokens of every admitted request (the hit-rate denominator)
        self.num_prefill_tokens_computed = 0  # prompt (and recomputed) tokens run through the model
        self.num_decode_tokens_computed = 0
        self.num_forwards = 0  # steps that ran the model (``num_steps`` counts every schedule)
        self._config: EngineConfig | None = None
        self._allocator: PageAllocator | None = None
        self.cache: PrefixCache = NoPrefixCache()
        self.adapter_budget: AdapterBudget | None = None  # LoRA only (``attach``)
        # Called whenever a request gives its pages back (finish, abort, preemption).
        self.on_release: list[Callable[[Request], None]] = []

    def attach(self, config: EngineConfig, allocator: PageAllocator, cache: PrefixCache) -> None:
        """Called once by the engine: a scheduler object can be built before the engine."""
        self._config, self._allocator, self.cache = config, allocator, cache
        if config.enable_lora:
            self.adapter_budget = AdapterBudget(config.max_loras_per_batch)

    @property
    def config(self) -> EngineConfig:
        assert self._config is not None, "scheduler is not attached to an engine"
        return self._config

    @property
    def allocator(self) -> PageAllocator:
        assert self._allocator is not None, "scheduler is not attached to an engine"
        return self._allocator

    # ---- queue state -------------------------------------------------------------------------

    def add_request(self, req: Request) -> None:
        req.state = RequestState.WAITING
        req.enqueue_step = self.num_steps
        self.waiting.append(req)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def policy_order(self) -> list[Request]:
        """The policy's admission order of the waiting queue; policies override this."""
        return sorted(self.waiting, key=lambda r: r.arrival_order)

    def order_waiting(self) -> list[Request]:
        """``policy_order``, except that requests waiting too long go first (no starvation)."""
        overdue = [
            r for r in self.waiting if self.num_steps - r.enqueue_step >= self.max_wait_steps
        ]
        if not overdue:
            return self.policy_order()
        overdue.sort(key=lambda r: r.arrival_order)
        return overdue + [r for r in self.policy_order() if r not in overdue]

    # ---- one step ----------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        self.num_steps += 1
        batch = ScheduledBatch()
        budget = self.config.max_prefill_tokens
        for req in list(self.running):
            if req.state is not RequestState.RUNNING:
                continue  # preempted earlier in this loop to make room for an older request
            prefilling = req.num_uncomputed_tokens > 1
            n = self._chunk(req.num_uncomputed_tokens, budget) if prefilling else 1
            if not prefilling and req.num_draft_slots:  # speculative: room for k drafts too
                if self._pages_needed(req, 1 + req.num_draft_slots) > self.allocator.num_free:
                    req.num_draft_slots = 0  # drafts never preempt anyone
            if n == 0 or not self._make_room(req, n + req.num_draft_slots, batch):
                continue
            if prefilling:
                budget -= n
            self._add_to_batch(req, n, batch)
        if not batch.preempted:
            for req in self.order_waiting():
                if len(self.running) >= self.config.max_running_requests or budget <= 0:
                    break
                if self.adapter_budget and not self.adapter_budget.admits(req, self.running):
                    continue  # its adapter would be one too many in this step
                match = self.cache.match_prefix(req.cache_key(len(req.token_ids) - 1))
                if self._prefix_in_flight(req, match.num_tokens):
                    continue
                n = self._admit(req, match, budget, batch)
                if n == 0:
                    break
                budget -= n
        return batch

    def _chunk(self, remaining: int, budget: int) -> int:
        """Tokens of a prefill to compute now, given the budget left in this step."""
        chunk = self.config.chunked_prefill_size
        if chunk is None:
            # Without chunking a prefill runs whole; one longer than the budget runs alone.
            fits = remaining <= budget or budget == self.config.max_prefill_tokens
            return remaining if fits else 0
        return max(0, min(remaining, chunk, budget))

    def _pages_needed(self, req: Request, n: int) -> int:
        page_size = self.config.page_size
        return -(-(req.num_computed_tokens + n) // page_size) - len(req.page_table)

    def _make_room(self, req: Request, n: int, batch: ScheduledBatch) -> bool:
        """Give ``req`` the pages for ``n`` more tokens, preempting newer requests if needed."""
        need = self._pages_needed(req, n)
        while self.allocator.num_free < need:
            self.cache.evict(need - self.allocator.num_free)
            if self.allocator.num_free >= need:
                break
            victim = self.running[-1]
            self.preempt(victim)
            batch.preempted.append(victim)
            if victim is req:
                return False
        req.page_table.extend(self.allocator.alloc(max(need, 0)))
        return True

    def _prefix_in_flight(self, req: Request, num_matched: int) -> bool:
        """Is a running request still prefilling whole pages that ``req`` shares beyond its match?

        Admitting ``req`` now would compute those pages a second time; a step or a few later
        they are in the cache (a prefill admitted in this very step counts: its pages enter the
        tree after the forward). The wait ends when that prefill ends or is preempted.
        """
        if isinstance(self.cache, NoPrefixCache):
            return False
        page_size = self.config.page_size
        limit = len(req.token_ids) - 1
        for other in self.running:
            if other.num_uncomputed_tokens <= 1 or other.lora != req.lora:
                continue  # decoding (its prompt pages are cached), or another adapter's K/V
            shared = len(os.path.commonprefix([req.token_ids[:limit], other.token_ids]))
            if (shared // page_size) * page_size > num_matched:
                return True
        return False

    def _admit(self, req: Request, match: PrefixMatch, budget: int, batch: ScheduledBatch) -> int:
        """Move ``req`` from waiting to running; returns the tokens it computes now (0: not now)."""
        n = self._chunk(len(req.token_ids) - match.num_tokens, budget)
        if n == 0:
            return 0
        self.allocator.incref(match.pages)
        self.cache.lock(match.node)
        req.page_table, req.cache_node = list(match.pages), match.node
        req.num_computed_tokens = req.num_cached_tokens = match.num_tokens
        need = self._pages_needed(req, n)
        if self.allocator.num_free < need:
            self.cache.evict(need - self.allocator.num_free)
        if self.allocator.num_free < need:
            self._release(req)
            return 0
        req.page_table.extend(self.allocator.alloc(need))
        if req.first_admission_cached_tokens is None:
            req.first_admission_cached_tokens = match.num_tokens
        self.num_cached_tokens += match.num_tokens
        self.num_admitted_tokens += len(req.token_ids)
        self.waiting.remove(req)
        self.running.append(req)
        req.state = RequestState.RUNNING
        self._add_to_batch(req, n, batch)
        return n

    def _add_to_batch(self, req: Request, n: int, batch: ScheduledBatch) -> None:
        batch.requests.append(req)
        batch.num_new_tokens.append(n)

    def rows(self, batch: ScheduledBatch) -> list[BatchRow]:
        """Each scheduled request's tokens for this step; advances ``num_computed_tokens``.

        A row samples when it brings its request up to date (the last prompt chunk, or a decode).
        A decode with drafts (``req.draft_ids``, speculative decoding) is a verify row: the last
        token and the drafts, with logits at each; only the last token counts as computed until
        ``accept`` says how many drafts were right.
        """
        rows: list[BatchRow] = []
        now = time.perf_counter()
        self.num_forwards += 1
        batch.starts = []
        for req, n in zip(batch.requests, batch.num_new_tokens):
            start = req.num_computed_tokens
            batch.starts.append(start)
            sample = start + n == len(req.token_ids)
            ids = req.token_ids[start : start + n] + req.draft_ids
            num_logits = 1 + len(req.draft_ids)
            rows.append(
                BatchRow(
                    ids, start, req.page_table, sample, False, req.request_id, num_logits, req.lora
                )
            )
            req.num_computed_tokens += n
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            if n == 1 and sample and start >= req.num_prompt_tokens:
                self.num_decode_tokens_computed += len(ids)
            else:
                self.num_prefill_tokens_computed += n
        return rows

    def accept(self, req: Request, num_accepted: int) -> None:
        """After a verify row: the first ``num_accepted`` drafts (now in ``token_ids``) keep
        their K/V; the rejected ones' slots are dropped, and pages that held only them go back
        to the free list. Nothing past ``num_computed_tokens`` ever reaches the prefix cache."""
        req.num_computed_tokens += num_accepted
        req.draft_ids, req.draft_probs, req.num_draft_slots = [], None, 0
        keep = -(-req.num_computed_tokens // self.config.page_size)
        if len(req.page_table) > keep:
            self.allocator.free(req.page_table[keep:])
            del req.page_table[keep:]

    def cache_computed(self, batch: ScheduledBatch) -> None:
        """After the forward: whole pages that ``batch`` completed enter the prefix cache.

        Only what has been computed is shared: a page enters the tree once its K/V are in the
        pool, never when it is merely scheduled (a request admitted in the same step as one
        whose prefix it shares waits a step for it, ``_prefix_in_flight``).
        """
        page_size = self.config.page_size
        for req, start in zip(batch.requests, batch.starts):
            end = req.num_computed_tokens
            if req.page_table and end // page_size > start // page_size:
                self._cache_tokens(req, end)

    def _cache_tokens(self, req: Request, num_tokens: int) -> None:
        if req.max_cached_tokens is not None:
            num_tokens = min(num_tokens, req.max_cached_tokens)
        node = self.cache.insert(req.cache_key(num_tokens), req.page_table)
        self.cache.lock(node)
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
        req.cache_node = node

    def _release(self, req: Request) -> None:
        if req.cache_node is not None:
            self.cache.unlock(req.cache_node)
            req.cache_node = None
        self.allocator.free(p for p in req.page_table if p != FREED_PAGE)
        req.page_table = []
        req.num_computed_tokens = 0
        req.draft_ids, req.draft_probs, req.num_draft_slots = [], None, 0
        for listener in self.on_release:
            listener(req)

    # ---- leaving the running set -------------------------------------------------------------

    def preempt(self, req: Request) -> None:
        """Free ``req``'s pages and send it back to wait; it is recomputed when re-admitted."""
        self._release(req)
        self.running.remove(req)
        self.add_request(req)
        self.num_preemptions += 1

    def abort(self, req: Request) -> None:
        """Take ``req`` out wherever it is; a running request's pages go as in ``finish``."""
        if req in self.running:
            self.finish(req)
        elif req in self.waiting:
            self.waiting.remove(req)
            req.state = RequestState.FINISHED

    def finish(self, req: Request) -> None:
        """Retire a finished request: its computed tokens go to the prefix cache, pages freed.

        The scheduler is the one owner of ``req.state``: WAITING and RUNNING are set here when
        it queues and admits, FINISHED when it retires (``OutputProcessor`` only says why)."""
        self._cache_tokens(req, req.num_computed_tokens)
        self._release(req)
        self.running.remove(req)
        req.state = RequestState.FINISHED

    # ---- invariants, statistics --------------------------------------------------------------

    def check_invariants(self) -> None:
        """Every page is free or held, by as many holders as its reference count says."""
        check_page_holders(self)

    def stats(self) -> dict[str, float | int]:
        """Queues, preemptions, pages and the prefix cache's share of admitted tokens."""
        return scheduler_stats(self)
