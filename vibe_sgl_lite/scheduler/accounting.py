"""What a scheduler reports and checks, beside what it decides.

    scheduler_stats(s)      queues, preemptions, pages and the prefix cache's share of admitted
                            tokens (``Scheduler.stats``; the engine's ``stats`` merges them)
    check_page_holders(s)   every page is free or held, and its reference count equals its
                            holders (``Scheduler.check_invariants``; run after every step when
                            ``VIBE_SGL_LITE_CHECK_INVARIANTS=1``)

A page's holders are the running requests' page tables plus the prefix cache's nodes (see
``PageAllocator``); a page pruning freed (``FREED_PAGE``) is held by nobody.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from vibe_sgl_lite.scheduler.request import FREED_PAGE

if TYPE_CHECKING:
    from vibe_sgl_lite.scheduler.scheduler import Scheduler


def check_page_holders(scheduler: Scheduler) -> None:
    """``AssertionError`` naming the first page whose reference count is not its holders."""
    allocator, cache = scheduler.allocator, scheduler.cache
    allocator.check_invariants()
    holders = Counter(cache.referenced_pages())
    for req in scheduler.running:
        holders.update(p for p in req.page_table if p != FREED_PAGE)
    for page in range(allocator.num_pages):
        count = allocator.refcount(page)
        assert count == holders[page], f"page {page}: refcount {count}, {holders[page]} holders"


def scheduler_stats(scheduler: Scheduler) -> dict[str, float | int]:
    """The scheduler's counters, queue lengths, page pool and prefix cache, by name."""
    s, cache, allocator = scheduler, scheduler.cache, scheduler.allocator
    admitted = s.num_admitted_tokens
    return {
        "num_prefill_tokens_computed": s.num_prefill_tokens_computed,
        "num_decode_tokens_computed": s.num_decode_tokens_computed,
        "num_steps": s.num_forwards,
        "num_cached_tokens": s.num_cached_tokens,
        "num_preemptions": s.num_preemptions,
        "num_running_requests": len(s.running),
        "num_waiting_requests": len(s.waiting),
        "kv_pages_total": allocator.num_pages,
        "kv_pages_free": allocator.num_free,
        "page_size": s.config.page_size,
        "num_cached_pages": cache.num_cached_pages,
        "num_evictable_pages": cache.evictable_pages(),
        "num_evicted_pages": cache.num_evicted_pages,
        "cache_hit_rate": s.num_cached_tokens / admitted if admitted else 0.0,
    }
