"""Tests of the radix prefix cache against the page allocator's reference counts.

The unit tests pin down each rule of the ownership contract with exact page ids; the state
machine at the end drives allocator + tree the way the engine does (match, incref, lock, alloc,
insert, move the lock, finish or abort) and checks the invariants after every step.
"""

from __future__ import annotations

import heapq
import itertools
from collections import Counter
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vibe_sgl_lite.cache import NoPrefixCache, PrefixCache, RadixCache, RadixNode
from vibe_sgl_lite.memory.page_allocator import PageAllocator

pytestmark = pytest.mark.unit


def make_cache(num_pages: int = 32, page_size: int = 1) -> tuple[RadixCache, PageAllocator]:
    allocator = PageAllocator(num_pages)
    cache = RadixCache()
    cache.attach(allocator, page_size)
    return cache, allocator


def finished_request(
    cache: RadixCache, allocator: PageAllocator, tokens: list[int], page_size: int
) -> list[int]:
    """Allocate pages for ``tokens``, insert them and free the request's hold: afterwards the
    tree is the only holder of the whole pages, as after a real request has finished."""
    pages = allocator.alloc(-(-len(tokens) // page_size))
    cache.insert(tokens, pages)
    allocator.free(pages)
    return pages


# ---- matching and insertion ---------------------------------------------------------------


@pytest.mark.parametrize("page_size", [1, 4])
def test_match_after_insert_returns_exact_pages(page_size: int) -> None:
    cache, allocator = make_cache(page_size=page_size)
    tokens = list(range(10, 10 + 3 * page_size))
    pages = allocator.alloc(3)
    node = cache.insert(tokens, pages)

    match = cache.match_prefix(tokens + [99] * page_size)
    assert match.pages == pages
    assert match.num_tokens == 3 * page_size
    assert match.node is node
    assert [allocator.refcount(p) for p in pages] == [2, 2, 2]

    shorter = cache.match_prefix(tokens[: 2 * page_size])
    assert shorter.pages == pages[:2]
    assert shorter.num_tokens == 2 * page_size
    assert [allocator.refcount(p) for p in pages] == [2, 2, 2], "matching takes no references"

    miss = cache.match_prefix([7] * page_size)
    assert (miss.pages, miss.num_tokens, miss.node) == ([], 0, cache.root)


def test_partial_last_page_is_neither_inserted_nor_matched() -> None:
    cache, allocator = make_cache(page_size=4)
    tokens = list(range(10))
    pages = allocator.alloc(3)
    node = cache.insert(tokens, pages)

    assert node.key == tuple(range(8))
    assert node.pages == pages[:2]
    assert [allocator.refcount(p) for p in pages] == [2, 2, 1]
    assert cache.num_cached_pages == 2

    match = cache.match_prefix(tokens)
    assert match.pages == pages[:2]
    assert match.num_tokens == 8
    assert cache.match_prefix(tokens[:3]).num_tokens == 0


def test_divergence_inside_an_edge_splits_at_the_page_boundary() -> None:
    cache, allocator = make_cache(page_size=2)
    first = allocator.alloc(3)
    cache.insert([1, 2, 3, 4, 5, 6], first)
    second = allocator.alloc(3)
    # Diverges at token 3, in the middle of the second page: only the first page is shared.
    leaf = cache.insert([1, 2, 3, 9, 5, 6], second)

    (upper,) = cache.root.children.values()
    assert upper.key == (1, 2) and upper.pages == first[:1]
    assert set(upper.children) == {(3, 4), (3, 9)}
    assert upper.children[(3, 4)].pages == first[1:]
    assert upper.children[(3, 9)] is leaf and leaf.pages == second[1:]
    assert cache.num_nodes == 3
    assert [allocator.refcount(p) for p in first] == [2, 2, 2]
    assert [allocator.refcount(p) for p in second] == [1, 2, 2], "shared page not re-referenced"

    match = cache.match_prefix([1, 2, 3, 9, 5, 6, 7])
    assert match.pages == [first[0], second[1], second[2]]


def test_match_splits_a_partly_matched_edge_so_the_node_covers_only_the_match() -> None:
    cache, allocator = make_cache(page_size=2)
    pages = allocator.alloc(4)
    old = cache.insert([1, 2, 3, 4, 5, 6, 7, 8], pages)
    cache.lock(old)

    match = cache.match_prefix([1, 2, 3, 4, 0, 0])
    assert match.pages == pages[:2] and match.num_tokens == 4
    assert match.node.key == (1, 2, 3, 4)
    assert match.node.children == {(5, 6): old}
    assert old.key == (5, 6, 7, 8) and old.pages == pages[2:]
    assert old.parent is match.node
    assert match.node.lock_ref == 1, "the upper half inherits the lock of the node it cut"
    assert [allocator.refcount(p) for p in pages] == [2, 2, 2, 2]
    cache.unlock(old)
    assert match.node.lock_ref == 0 and cache.root.lock_ref == 0


def test_insert_of_a_cached_prefix_with_other_pages_takes_no_references() -> None:
    cache, allocator = make_cache(page_size=2)
    tokens = [1, 2, 3, 4]
    pages_a = allocator.alloc(2)
    node_a = cache.insert(tokens, pages_a)
    pages_b = allocator.alloc(3)  # computed the same prefix concurrently, plus a partial page

    node_b = cache.insert(tokens + [5], pages_b)
    assert node_b is node_a
    assert [allocator.refcount(p) for p in pages_b] == [1, 1, 1]
    assert cache.match_prefix(tokens).pages == pages_a

    # Its continuation is new to the tree, so that part (and only that part) is referenced.
    longer = cache.insert(tokens + [5, 6], pages_b)
    assert longer.parent is node_a and longer.pages == pages_b[2:]
    assert [allocator.refcount(p) for p in pages_b] == [1, 1, 2]
    assert cache.num_cached_pages == 3


def test_insert_needs_a_page_per_whole_page_of_tokens() -> None:
    cache, allocator = make_cache(page_size=2)
    with pytest.raises(ValueError, match="need 2 pages"):
        cache.insert([1, 2, 3, 4], allocator.alloc(1))


def test_the_cache_refuses_work_until_attached() -> None:
    with pytest.raises(RuntimeError, match="attach"):
        RadixCache().match_prefix([1, 2])


# ---- locking and eviction -----------------------------------------------------------------


def test_lock_counts_on_the_node_and_every_ancestor() -> None:
    cache, allocator = make_cache()
    parent = cache.insert([1, 2], allocator.alloc(2))
    child = cache.insert([1, 2, 3], allocator.alloc(3))
    cache.lock(child)
    cache.lock(parent)
    assert (child.lock_ref, parent.lock_ref, cache.root.lock_ref) == (1, 2, 2)
    cache.unlock(child)
    cache.unlock(parent)
    assert (child.lock_ref, parent.lock_ref, cache.root.lock_ref) == (0, 0, 0)
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(child)
    assert (child.lock_ref, parent.lock_ref, cache.root.lock_ref) == (0, 0, 0)


def test_lock_prevents_eviction() -> None:
    cache, allocator = make_cache(num_pages=8)
    locked_pages = finished_request(cache, allocator, [1, 2, 3], 1)
    free_pages = finished_request(cache, allocator, [4, 5], 1)
    cache.lock(cache.match_prefix([1, 2, 3]).node)

    assert cache.evictable_pages() == 2
    assert cache.evict(8) == 2
    assert all(allocator.refcount(p) == 0 for p in free_pages)
    assert all(allocator.refcount(p) == 1 for p in locked_pages)
    assert cache.match_prefix([1, 2, 3]).pages == locked_pages
    assert cache.evict(8) == 0


def test_eviction_is_least_recently_used_first() -> None:
    cache, allocator = make_cache(num_pages=8)
    a = finished_request(cache, allocator, [1, 1], 1)
    b = finished_request(cache, allocator, [2, 2], 1)
    c = finished_request(cache, allocator, [3, 3], 1)
    cache.match_prefix([1, 1])  # a is now the most recently used, b the least

    assert cache.evict(1) == 2, "eviction removes whole nodes"
    assert [allocator.refcount(p) for p in a + b + c] == [1, 1, 0, 0, 1, 1]
    assert cache.evict(1) == 2
    assert [allocator.refcount(p) for p in a + c] == [1, 1, 0, 0]
    assert cache.num_evicted_pages == 4


def test_a_parent_becomes_evictable_once_its_children_are_gone() -> None:
    cache, allocator = make_cache(num_pages=8, page_size=2)
    finished_request(cache, allocator, [1, 2, 3, 4], 2)
    finished_request(cache, allocator, [1, 2, 5, 6], 2)
    assert cache.num_nodes == 3
    assert cache.evict(3) == 3
    assert cache.num_nodes == 0 and allocator.num_free == 8


def test_evict_never_frees_a_page_a_request_still_holds() -> None:
    cache, allocator = make_cache(num_pages=8)
    held = allocator.alloc(2)  # a request that holds its pages but (wrongly) locked nothing
    cache.insert([1, 2], held)
    idle = finished_request(cache, allocator, [3, 4], 1)
    cache.match_prefix([1, 2])  # make the held node the most recent: it survives the first pop

    assert cache.evictable_pages() == 2
    assert cache.evict(1) == 2
    assert [allocator.refcount(p) for p in idle] == [0, 0]
    assert cache.evict(1) == 0, "dropping the tree's reference frees nothing the request holds"
    assert [allocator.refcount(p) for p in held] == [1, 1]
    assert cache.num_nodes == 0 and cache.num_cached_pages == 0
    assert allocator.num_free == 6
    allocator.check_invariants()


# ---- flushing, stats, rendering -----------------------------------------------------------


def test_flush_with_a_locked_node_raises_and_changes_nothing() -> None:
    cache, allocator = make_cache()
    pages = finished_request(cache, allocator, [1, 2, 3], 1)
    cache.lock(cache.match_prefix([1, 2]).node)
    with pytest.raises(RuntimeError, match="request is running"):
        cache.flush()
    assert cache.num_cached_pages == 3
    assert [allocator.refcount(p) for p in pages] == [1, 1, 1]


def test_flush_after_every_request_finished_frees_every_page() -> None:
    cache, allocator = make_cache(num_pages=16, page_size=2)
    running = allocator.alloc(3)
    node = cache.insert([1, 2, 3, 4, 5], running)
    cache.lock(node)
    finished_request(cache, allocator, [1, 2, 7, 7, 8, 8], 2)
    cache.unlock(node)
    allocator.free(running)

    cache.flush()
    assert allocator.num_free == 16
    assert cache.num_nodes == 0 and cache.num_cached_pages == 0
    assert cache.match_prefix([1, 2, 3, 4]).num_tokens == 0
    allocator.check_invariants()


def test_stats_count_nodes_cached_and_evictable_pages() -> None:
    cache, allocator = make_cache(num_pages=16, page_size=2)
    held = allocator.alloc(2)
    node = cache.insert([1, 2, 3, 4], held)
    cache.lock(node)
    finished_request(cache, allocator, [1, 2, 9, 9, 9, 9], 2)
    assert cache.num_nodes == 3
    assert cache.num_cached_pages == 4
    assert cache.evictable_pages() == 2, "the locked path [1,2][3,4] cannot be evicted"


def test_to_dot_shows_tokens_locks_and_pages() -> None:
    cache, allocator = make_cache(page_size=2)
    pages = allocator.alloc(2)
    cache.lock(cache.insert([5, 6, 7, 8], pages))
    dot = cache.to_dot()
    assert dot.startswith("digraph radix {") and dot.rstrip().endswith("}")
    assert f"4 tokens: 5 6 7 8\\nlock_ref=1\\npages=[{pages[0]}, {pages[1]}]" in dot
    assert "n0 -> n1;" in dot and "fillcolor" in dot

    text = cache.to_dot(decode=lambda ids: "".join(chr(96 + i) for i in ids))
    assert "4 tokens: 'efgh'" in text


def test_no_prefix_cache_shares_nothing() -> None:
    allocator = PageAllocator(4)
    cache = NoPrefixCache()
    cache.attach(allocator, 2)
    pages = allocator.alloc(2)
    node = cache.insert([1, 2, 3, 4], pages)
    match = cache.match_prefix([1, 2, 3, 4])
    assert (match.pages, match.num_tokens, match.node) == ([], 0, node)
    assert [allocator.refcount(p) for p in pages] == [1, 1]
    cache.lock(node)
    cache.unlock(node)
    with pytest.raises(RuntimeError, match="not locked"):
        cache.unlock(node)
    assert (cache.evict(4), cache.evictable_pages(), cache.num_cached_pages) == (0, 0, 0)
    cache.flush()
    assert isinstance(cache, PrefixCache) and isinstance(RadixCache(), PrefixCache)


def full_tree_victims(
    cache: RadixCache, allocator: PageAllocator, num_pages: int
) -> set[RadixNode]:
    """The nodes that eviction by a heap over a walk of the whole tree would drop (the
    original ``evict``), computed without touching the tree."""
    children = {id(n): len(n.children) for n in cache.nodes()}
    tie = itertools.count()
    heap = [(n.last_access, next(tie), n) for n in cache.nodes() if not n.children]
    heap = [h for h in heap if h[2].lock_ref == 0]
    heapq.heapify(heap)
    victims: set[RadixNode] = set()
    freed = 0
    while freed < num_pages and heap:
        _, _, leaf = heapq.heappop(heap)
        victims.add(leaf)
        freed += sum(1 for p in leaf.pages if allocator.refcount(p) == 1)
        parent = leaf.parent
        assert parent is not None
        if not parent.is_root:
            children[id(parent)] -= 1
            if children[id(parent)] == 0 and parent.lock_ref == 0:
                heapq.heappush(heap, (parent.last_access, next(tie), parent))
    return victims


# ---- the state machine --------------------------------------------------------------------


@dataclass
class Req:
    tokens: list[int]
    pages: list[int]
    node: RadixNode


class CacheMachine(RuleBasedStateMachine):
    """Allocator + radix tree driven the way the engine drives them.

    Tokens come from a three-letter alphabet so that prefixes collide often. ``written`` is the
    ground truth for the KV content: for every full page a request computed, the token prefix it
    ends (its KV depends on all of it). Every page the tree hands out must hold exactly the
    prefix it was matched for.
    """

    NUM_PAGES = 24

    def __init__(self) -> None:
        super().__init__()
        self.requests: dict[int, Req] = {}
        self.next_id = 0
        self.written: dict[int, tuple[int, ...]] = {}

    @initialize(page_size=st.sampled_from([1, 2, 4]))
    def setup(self, page_size: int) -> None:
        self.page_size = page_size
        self.allocator = PageAllocator(self.NUM_PAGES)
        self.cache = RadixCache()
        self.cache.attach(self.allocator, page_size)

    def alloc(self, n: int) -> list[int] | None:
        """Allocate like the scheduler: evict from the tree when short, give up if still short."""
        short = n - self.allocator.num_free
        if short > 0:
            before = self.allocator.num_free
            freed = self.cache.evict(short)
            assert self.allocator.num_free == before + freed
            self.forget_free_pages()
            if freed < short:
                assert self.cache.evictable_pages() == 0
                return None
        return self.allocator.alloc(n)

    def record_full_pages(self, req: Req) -> None:
        for i in range(len(req.tokens) // self.page_size):
            prefix = tuple(req.tokens[: (i + 1) * self.page_size])
            assert self.written.setdefault(req.pages[i], prefix) == prefix

    def path_tokens(self, node: RadixNode) -> tuple[int, ...]:
        """The tokens from the root to ``node``, asserting that ``node`` is still in the tree."""
        tokens: tuple[int, ...] = ()
        while node.parent is not None:
            assert node.parent.children.get(node.key[: self.page_size]) is node, "node left tree"
            tokens = node.key + tokens
            node = node.parent
        assert node is self.cache.root
        return tokens

    def insert(self, req: Req) -> RadixNode:
        """Insert like the engine and check the node it returns ends the whole-page prefix."""
        node = self.cache.insert(req.tokens, req.pages)
        whole = len(req.tokens) // self.page_size * self.page_size
        assert self.path_tokens(node) == tuple(req.tokens[:whole])
        return node

    def forget_free_pages(self) -> None:
        """A page back on the free list holds garbage as far as the next owner is concerned."""
        self.written = {p: t for p, t in self.written.items() if self.allocator.refcount(p) > 0}

    def release(self, req: Req) -> None:
        self.cache.unlock(req.node)
        self.allocator.free(req.pages)
        self.forget_free_pages()

    @rule(tokens=st.lists(st.integers(0, 2), min_size=1, max_size=12))
    def new_request(self, tokens: list[int]) -> None:
        match = self.cache.match_prefix(tokens)
        assert match.num_tokens == len(match.pages) * self.page_size <= len(tokens)
        for i, page in enumerate(match.pages):
            assert self.written[page] == tuple(tokens[: (i + 1) * self.page_size])
        self.allocator.incref(match.pages)
        self.cache.lock(match.node)
        fresh = self.alloc(-(-len(tokens) // self.page_size) - len(match.pages))
        if fresh is None:
            self.release(Req(tokens, match.pages, match.node))
            return
        req = Req(tokens, match.pages + fresh, match.node)
        self.record_full_pages(req)
        node = self.insert(req)
        self.cache.lock(node)
        self.cache.unlock(req.node)
        req.node = node
        self.requests[self.next_id] = req
        self.next_id += 1

    @precondition(lambda self: self.requests)
    @rule(data=st.data(), output=st.lists(st.integers(0, 2), max_size=6))
    def finish_request(self, data: st.DataObject, output: list[int]) -> None:
        req = self.requests.pop(data.draw(st.sampled_from(sorted(self.requests))))
        total = len(req.tokens) + len(output)
        extra = self.alloc(-(-total // self.page_size) - len(req.pages))
        if extra is not None:
            req.pages += extra
            req.tokens += output
        self.record_full_pages(req)
        self.insert(req)
        self.release(req)

    @precondition(lambda self: self.requests)
    @rule(data=st.data())
    def abort_request(self, data: st.DataObject) -> None:
        """Preemption: the request lets go of everything without sharing what it computed."""
        self.release(self.requests.pop(data.draw(st.sampled_from(sorted(self.requests)))))

    @rule(num_pages=st.integers(0, NUM_PAGES))
    def evict(self, num_pages: int) -> None:
        locked = {p for n in self.cache.nodes() if n.lock_ref > 0 for p in n.pages}
        expected = full_tree_victims(self.cache, self.allocator, num_pages)
        nodes_before = set(self.cache.nodes())
        before = self.allocator.num_free
        freed = self.cache.evict(num_pages)
        assert nodes_before - set(self.cache.nodes()) == expected, "other victims than LRU"
        assert self.allocator.num_free == before + freed
        assert all(self.allocator.refcount(p) > 0 for p in locked)
        self.forget_free_pages()
        if freed < num_pages:
            assert all(n.lock_ref > 0 for n in self.cache.nodes()), "an unlocked node survived"

    @rule()
    def flush(self) -> None:
        if self.requests:
            with pytest.raises(RuntimeError, match="request is running"):
                self.cache.flush()
        else:
            self.cache.flush()
            assert self.allocator.num_free == self.NUM_PAGES
            assert self.cache.num_nodes == 0
            self.written.clear()

    @invariant()
    def refcounts_equal_holders(self) -> None:
        self.allocator.check_invariants()
        holders = Counter(p for r in self.requests.values() for p in r.pages)
        holders.update(p for n in self.cache.nodes() for p in n.pages)
        for page in range(self.NUM_PAGES):
            assert self.allocator.refcount(page) == holders[page], f"page {page}"
        assert self.allocator.num_free + len(holders) == self.NUM_PAGES
        assert self.cache.num_cached_pages == sum(len(n.pages) for n in self.cache.nodes())

    @invariant()
    def tree_is_well_formed_and_matches_the_kv(self) -> None:
        ps = self.page_size
        stack: list[tuple[RadixNode, tuple[int, ...]]] = [(self.cache.root, ())]
        while stack:
            node, prefix = stack.pop()
            for first_page, child in node.children.items():
                assert child.parent is node and child.key[:ps] == first_page
                assert len(child.key) > 0 and len(child.key) % ps == 0
                assert len(child.pages) == len(child.key) // ps
                path = prefix + child.key
                for i, page in enumerate(child.pages):
                    end = len(prefix) + (i + 1) * ps
                    assert self.written[page] == path[:end], "a page holds another prefix's KV"
                stack.append((child, path))

    @invariant()
    def leaves_are_tracked_and_have_distinct_stamps(self) -> None:
        """``evict`` heaps the tracked leaves; distinct stamps make its order the LRU order."""
        leaves = [n for n in self.cache.nodes() if n.is_leaf]
        assert set(self.cache._leaves) == set(leaves)
        assert len({n.last_access for n in leaves}) == len(leaves)

    @invariant()
    def locked_nodes_stay_in_the_tree_and_count_their_locks(self) -> None:
        expected: Counter[int] = Counter()
        for req in self.requests.values():
            locked = self.path_tokens(req.node)
            assert locked == tuple(req.tokens[: len(locked)]), "request locked another prefix"
            expected.update(id(n) for n in req.node.path())
        for node in [self.cache.root, *self.cache.nodes()]:
            assert node.lock_ref == expected[id(node)]
        refcount = self.allocator.refcount
        assert self.cache.evictable_pages() == sum(
            1 for n in self.cache.nodes() if n.lock_ref == 0 for p in n.pages if refcount(p) == 1
        )

    def teardown(self) -> None:
        """Invariant 4 of the design: once every request has finished, a flush frees it all."""
        if not hasattr(self, "cache"):
            return
        for req in list(self.requests.values()):
            self.cache.insert(req.tokens, req.pages)
            self.release(req)
        self.requests.clear()
        self.cache.flush()
        assert self.allocator.num_free == self.NUM_PAGES
        self.allocator.check_invariants()


CacheMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_cache_state_machine = CacheMachine.TestCase


@given(
    st.lists(st.integers(0, 3), max_size=40),
    st.lists(st.integers(0, 3), max_size=40),
    st.integers(1, 5),
    st.booleans(),
)
def test_shared_whole_pages_is_the_common_prefix_in_whole_pages(
    a: list[int], b: list[int], page_size: int, as_tuple: bool
) -> None:
    """The page-at-a-time comparison equals the token-by-token definition, for lists and
    tuples alike (keys are tuples, requests' tokens lists)."""
    from vibe_sgl_lite.cache.radix_cache import _shared_whole_pages

    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    left = tuple(a) if as_tuple else a
    assert _shared_whole_pages(left, b, page_size) == n // page_size * page_size
    assert _shared_whole_pages(left, left, page_size) == len(a) // page_size * page_size
