"""A compressed radix tree over token ids whose nodes hold KV pages (SGLang's RadixAttention).

Requests that share a prompt prefix (a system prompt, few-shot examples, an earlier turn of the
same chat) have identical K and V for that prefix, so the tree keeps the pages of finished and
running requests and lets a new request start from the longest cached prefix of its prompt.

How the engine drives it, for one request::

    match = cache.match_prefix(prompt)          # cached pages, no references taken
    allocator.incref(match.pages)               # the request holds the cached pages ...
    cache.lock(match.node)                      # ... and pins them against eviction
    pages = match.pages + allocator.alloc(...)  # fresh pages for the rest (evict if short)
    node = cache.insert(prompt, pages)          # after prefill: share what it computed
    cache.lock(node); cache.unlock(match.node)  # move the lock down to the new node
    ...                                         # at finish: insert(prompt + output, pages),
                                                # unlock(node), allocator.free(pages)

Whole pages only. Every edge is a multiple of ``page_size`` tokens and owns whole pages, so
matching, splitting and eviction never cut a page in two. A request's partial last page is
neither inserted nor matched: its free slots are about to be written by that request's own next
tokens, so sharing it would let another request read (or overwrite) KV that is not its prefix.
The price is at most ``page_size - 1`` recomputed tokens per hit; once the page fills (the
insert at finish sees prompt + output) it is cached like any other.

Invariants (checked by the state-machine test in ``tests/cache``):

====  ======================================================================================
 1    a page's refcount == number of requests holding it + number of nodes referencing it
 2    ``node.lock_ref`` == number of locks held on the node or on any node below it, so a
      locked node's ancestors are locked too and eviction (leaves with ``lock_ref == 0``)
      never removes a page that a running request depends on
 3    node keys are whole pages, ``len(node.pages) == len(node.key) // page_size``, and the
      pages on the path to a node hold the KV of exactly the tokens on that path
====  ======================================================================================
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator, Sequence

from vibe_sgl_lite.cache.base import PrefixMatch, RadixNode
from vibe_sgl_lite.memory.page_allocator import PageAllocator

_DOT_PREVIEW = 8
"""How many tokens and pages of an edge ``to_dot`` shows before eliding the rest."""


class RadixCache:
    """The prefix cache used when ``enable_prefix_cache=True``.

    Constructed without arguments (``ModelRunner(..., cache=RadixCache())``) because the page
    pool does not exist yet; the engine calls ``attach(allocator, page_size)`` once it does.
    """

    def __init__(self) -> None:
        self.root = RadixNode(key=(), pages=[], parent=None)
        self.page_size = 0
        self._allocator: PageAllocator | None = None
        self._clock = 0
        self._num_cached_pages = 0
        self._num_evicted_pages = 0
        # Every leaf of the tree (root excepted), kept as nodes come and go so that ``evict``
        # looks at the leaves only, not at every node (a dict: an ordered set of identities).
        self._leaves: dict[RadixNode, None] = {}

    def attach(self, allocator: PageAllocator, page_size: int) -> None:
        """Bind the cache to the engine's page pool; the tree must be empty (its pages would
        belong to another pool)."""
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        if self.root.children:
            raise RuntimeError("cannot attach a RadixCache that still holds pages; flush it first")
        self._allocator = allocator
        self.page_size = page_size

    # ---- lookup and insertion ------------------------------------------------------------

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached whole-page prefix of ``tokens``.

        Takes no references, but splits a node whose edge only partly matches so that
        ``match.node`` covers exactly the returned pages and locking it pins nothing more.
        Marks the matched path as recently used. An engine that needs the logits of the last
        prompt token should match ``tokens[:-1]``, so that at least one token is computed.
        """
        self._require_allocator()
        node, pages = self._walk(tuple(tokens))
        self._touch(node)
        return PrefixMatch(pages=pages, num_tokens=len(pages) * self.page_size, node=node)

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> RadixNode:
        """Share the whole-page prefix of a request's tokens; return the node that ends it.

        ``pages`` is the request's page table (it may be longer, e.g. a partial last page).
        The tree takes one reference on each page it adds. Where the tokens are already cached,
        even under different page ids (two requests computed the same prefix at once), the tree
        keeps its own pages and takes nothing: the request's copies die with the request.
        """
        allocator = self._require_allocator()
        ps = self.page_size
        num_tokens = len(tokens) // ps * ps
        if len(pages) < num_tokens // ps:
            raise ValueError(f"{num_tokens} tokens need {num_tokens // ps} pages, got {len(pages)}")
        key = tuple(tokens[:num_tokens])
        node, cached = self._walk(key)
        start = len(cached) * ps
        if start < num_tokens:
            new_pages = list(pages[start // ps : num_tokens // ps])
            allocator.incref(new_pages)
            leaf = RadixNode(key=key[start:], pages=new_pages, parent=node)
            node.children[leaf.key[:ps]] = leaf
            self._leaves.pop(node, None)
            self._leaves[leaf] = None
            self._num_cached_pages += len(new_pages)
            node = leaf
        self._touch(node)
        return node

    def _walk(self, tokens: tuple[int, ...]) -> tuple[RadixNode, list[int]]:
        """Descend while whole pages match; split the last edge if it matches only partly.

        After a split the new upper node's only child differs in its first page (or ``tokens``
        ran out), so the loop ends there without a special case.
        """
        ps = self.page_size
        node, pages, i = self.root, [], 0
        while len(tokens) - i >= ps:
            child = node.children.get(tokens[i : i + ps])
            if child is None:
                break
            shared = _shared_whole_pages(child.key, tokens[i : i + len(child.key)], ps)
            if shared < len(child.key):
                child = self._split(child, shared)
            node = child
            pages.extend(child.pages)
            i += shared
        return node, pages

    def _split(self, node: RadixNode, num_tokens: int) -> RadixNode:
        """Cut ``node``'s edge after ``num_tokens`` (a page boundary); return the upper half.

        The lower half stays the same object, so a request that locked ``node`` still holds
        the right node; the upper half inherits ``lock_ref`` because its subtree is exactly the
        old node's subtree. Pages only change owner node, so no refcount moves.
        """
        parent = node.parent
        assert parent is not None and 0 < num_tokens < len(node.key)
        ps = self.page_size
        upper = RadixNode(
            key=node.key[:num_tokens],
            pages=node.pages[: num_tokens // ps],
            parent=parent,
            lock_ref=node.lock_ref,
            last_access=node.last_access,
        )
        node.key, node.pages = node.key[num_tokens:], node.pages[num_tokens // ps :]
        node.parent = upper
        upper.children[node.key[:ps]] = node
        parent.children[upper.key[:ps]] = upper
        return upper

    def _touch(self, node: RadixNode) -> None:
        """Mark ``node`` and its ancestors as used now (a logical clock, so tests can rely on it)."""
        self._clock += 1
        for n in _ancestors(node):
            n.last_access = self._clock

    # ---- locking, eviction, flushing -------------------------------------------------------

    def lock(self, node: RadixNode) -> None:
        """Pin ``node`` and its ancestors: none of them can be evicted until ``unlock``."""
        for n in _ancestors(node):
            n.lock_ref += 1

    def unlock(self, node: RadixNode) -> None:
        if node.lock_ref <= 0:
            raise RuntimeError("unlock of a node that is not locked (lock_ref would go negative)")
        for n in _ancestors(node):
            n.lock_ref -= 1

    def evict(self, num_pages: int) -> int:
        """Drop least-recently-used unlocked leaves until ``num_pages`` pages became free.

        Returns the number of pages that actually returned to the free list, which can be less
        than the pages dropped from the tree: a page that a request also holds stays in use.
        A parent whose last child goes becomes a leaf and a candidate in its own right.

        The heap is built over the tracked leaves (``_leaves``), not over a walk of the whole
        tree: the same candidates, and the same order, because no two leaves share a
        ``last_access`` (the nodes stamped by one ``_touch`` form one root path, a split copies
        the stamp to the new parent of the stamped node, and a path holds at most one leaf; the
        state-machine test checks both this and the victims against a full-tree heap).
        """
        if num_pages <= 0:
            return 0
        tie = itertools.count()
        heap = [(n.last_access, next(tie), n) for n in self._leaves if n.lock_ref == 0]
        heapq.heapify(heap)
        freed = 0
        while freed < num_pages and heap:
            _, _, leaf = heapq.heappop(heap)
            parent = leaf.parent
            assert parent is not None
            del parent.children[leaf.key[: self.page_size]]
            del self._leaves[leaf]
            freed += self._release(leaf)
            self._num_evicted_pages += len(leaf.pages)
            if not parent.children and not parent.is_root:
                self._leaves[parent] = None
                if parent.lock_ref == 0:
                    heapq.heappush(heap, (parent.last_access, next(tie), parent))
        return freed

    def flush(self) -> None:
        """Empty the tree and give back all its references (SGLang's ``flush_cache``).

        Refused while any lock is held, because a running request still reads those pages;
        ``root.lock_ref`` counts every lock in the tree.
        """
        if self.root.lock_ref > 0:
            raise RuntimeError(
                f"cannot flush the prefix cache while a request is running "
                f"({self.root.lock_ref} lock(s) held)"
            )
        for node in list(self.nodes()):
            self._release(node)
        self.root.children.clear()
        self._leaves.clear()

    def _release(self, node: RadixNode) -> int:
        """Give back the tree's references to ``node``'s pages; return how many became free."""
        allocator = self._require_allocator()
        before = allocator.num_free
        allocator.free(node.pages)
        self._num_cached_pages -= len(node.pages)
        return allocator.num_free - before

    # ---- statistics and rendering ----------------------------------------------------------

    @property
    def num_cached_pages(self) -> int:
        """Pages referenced by the tree (some may also be held by running requests)."""
        return self._num_cached_pages

    @property
    def num_evicted_pages(self) -> int:
        """Pages dropped from the tree by ``evict`` since construction (``flush`` not counted)."""
        return self._num_evicted_pages

    @property
    def num_nodes(self) -> int:
        """Nodes in the tree, not counting the root."""
        return sum(1 for _ in self.nodes())

    def evictable_pages(self) -> int:
        """Pages that eviction could return to the free list right now.

        A page counts if its node is unlocked (so the whole subtree below is unlocked and
        can be evicted leaf by leaf) and the tree is its only holder (refcount 1).
        """
        if self._allocator is None:
            return 0
        refcount = self._allocator.refcount
        return sum(1 for n in self.nodes() if n.lock_ref == 0 for p in n.pages if refcount(p) == 1)

    def referenced_pages(self) -> list[int]:
        """Every page the tree holds a reference to (each node holds its pages once)."""
        return [page for node in self.nodes() for page in node.pages]

    def to_dot(self, decode: Callable[[Sequence[int]], str] | None = None) -> str:
        """Graphviz ``dot`` text of the tree: each node shows its token count, the first tokens
        of its edge (as text if ``decode`` is given), ``lock_ref`` and pages; locked nodes are
        shaded. Render with ``dot -Tpng``; producing the text needs no graphviz."""
        lines = ["digraph radix {", '  node [shape=box, fontname="monospace"];']
        names: dict[int, str] = {}
        for node in itertools.chain([self.root], self.nodes()):
            name = names[id(node)] = f"n{len(names)}"
            label = _dot_label(node, decode)
            style = ', style=filled, fillcolor="#ffd8a8"' if node.lock_ref > 0 else ""
            lines.append(f'  {name} [label="{_dot_escape(label)}"{style}];')
            if node.parent is not None:
                lines.append(f"  {names[id(node.parent)]} -> {name};")
        lines.append("}")
        return "\n".join(lines) + "\n"

    # ---- helpers ----------------------------------------------------------------------------

    def nodes(self) -> Iterator[RadixNode]:
        """Every node except the root, parents before children (depth first)."""
        stack = list(reversed(self.root.children.values()))
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children.values()))

    def _require_allocator(self) -> PageAllocator:
        if self._allocator is None:
            raise RuntimeError("RadixCache is not attached: call attach(allocator, page_size)")
        return self._allocator


def _shared_whole_pages(a: Sequence[int], b: Sequence[int], page_size: int) -> int:
    """Length of the common prefix of ``a`` and ``b``, rounded down to whole pages.

    Compared a page at a time as tuples (one C-level comparison each, and the whole run at once
    first: a request matching a cached prompt usually shares all of it), not token by token."""
    limit = min(len(a), len(b)) // page_size * page_size
    ta, tb = tuple(a[:limit]), tuple(b[:limit])
    if ta == tb:
        return limit
    n = 0
    while ta[n : n + page_size] == tb[n : n + page_size]:
        n += page_size
    return n


def _dot_label(node: RadixNode, decode: Callable[[Sequence[int]], str] | None) -> str:
    if node.is_root:
        return f"root\nlock_ref={node.lock_ref}"
    shown = node.key[:_DOT_PREVIEW]
    text = repr(decode(shown)) if decode else " ".join(map(str, shown))
    more = " ..." if len(node.key) > len(shown) else ""
    pages = ", ".join(map(str, node.pages[:_DOT_PREVIEW]))
    if len(node.pages) > _DOT_PREVIEW:
        pages += ", ..."
    return f"{len(node.key)} tokens: {text}{more}\nlock_ref={node.lock_ref}\npages=[{pages}]"


def _dot_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _ancestors(node: RadixNode | None) -> Iterator[RadixNode]:
    """``node`` and its ancestors, deepest first, root last (``RadixNode.path`` as a walk)."""
    while node is not None:
        yield node
        node = node.parent
