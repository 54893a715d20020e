"""Reference-counted allocator of KV-cache pages.

A *page* holds the K and V of ``page_size`` consecutive tokens of one sequence. Pages are
identified by integers ``0 .. num_pages - 1`` that index the first dimension of the KV pool.

Invariants (each checked by ``check_invariants`` and by the property tests):

====  ====================================================================
 1    every page is either free (refcount 0, in the free list) or referenced
      (refcount >= 1, not in the free list); never both, never neither
 2    a page's refcount equals the number of holders (requests and radix-tree
      nodes) that hold it; ``free`` of a page with refcount 0 is an error
 3    ``num_free + (pages with refcount >= 1) == num_pages`` at all
      times: the free list holds no page twice
====  ====================================================================
"""

from __future__ import annotations

from collections.abc import Iterable


class OutOfPagesError(RuntimeError):
    """Raised by ``alloc`` when fewer pages are free than requested."""


class PageAllocator:
    """Hands out page ids and counts who holds each one.

    ``alloc(n)`` returns ``n`` pages with refcount 1. A second holder (a prefix-cache node, or a
    request that reuses a cached prefix) calls ``incref``; every holder calls ``free`` when it is
    done, and a page returns to the free list when its last holder lets go.
    """

    def __init__(self, num_pages: int) -> None:
        if num_pages <= 0:
            raise ValueError(f"num_pages must be >= 1, got {num_pages}")
        self.num_pages = num_pages
        self._refcount = [0] * num_pages
        # A stack: recently freed pages are reused first, which keeps the working set warm.
        self._free: list[int] = list(range(num_pages - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    def alloc(self, n: int) -> list[int]:
        """Take ``n`` free pages; each comes back with refcount 1."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        if n > len(self._free):
            raise OutOfPagesError(f"requested {n} pages, only {len(self._free)} free")
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._refcount[p] = 1
        return pages

    def incref(self, pages: Iterable[int]) -> None:
        """Add one holder to pages that are already in use."""
        for p in pages:
            if self._refcount[p] <= 0:
                raise RuntimeError(f"incref of free page {p}")
            self._refcount[p] += 1

    def free(self, pages: Iterable[int]) -> None:
        """Drop one holder from each page; pages whose last holder leaves become free."""
        for p in pages:
            rc = self._refcount[p]
            if rc <= 0:
                raise RuntimeError(f"double free of page {p}")
            self._refcount[p] = rc - 1
            if rc == 1:
                self._free.append(p)

    def refcount(self, page: int) -> int:
        return self._refcount[page]

    def check_invariants(self) -> None:
        """Assert invariants 1 and 3: run by the property tests, and by ``Engine`` after every
        step when ``VIBE_SGL_LITE_CHECK_INVARIANTS=1`` (which also checks invariant 2)."""
        free = set(self._free)
        assert len(free) == len(self._free), "a page appears twice in the free list"
        for p, rc in enumerate(self._refcount):
            assert rc >= 0, f"page {p} has negative refcount {rc}"
            assert (rc == 0) == (p in free), f"page {p}: refcount {rc}, in free list {p in free}"
