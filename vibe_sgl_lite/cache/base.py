"""What every prefix cache shares: the node and match types, the protocol, and the no-op cache.

The engine talks to a prefix cache only through ``PrefixCache``, so turning sharing off
(``enable_prefix_cache=False``) swaps in ``NoPrefixCache`` without a single ``if`` in the
scheduler: it matches nothing, caches nothing and never holds a page.

Ownership (the same for every implementation): a page's refcount in the ``PageAllocator`` is the
number of its holders. A request holds each page of its page table once; the cache holds each
page it references once. A page is free only when no request and no cache node holds it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from vibe_sgl_lite.memory.page_allocator import PageAllocator


@dataclass(eq=False)
class RadixNode:
    """One edge of the radix tree and the KV pages that hold its tokens.

    ``key`` is the run of token ids on the edge from ``parent`` to this node; its length is a
    multiple of ``page_size`` and ``pages[i]`` holds tokens ``key[i*page_size:(i+1)*page_size]``,
    so a node never owns part of a page. ``children`` is keyed by the first *page* of the child's
    key (``page_size`` token ids): two children can share a first token but never a first page,
    and matching walks the tree one dictionary lookup per edge.

    ``lock_ref`` counts the locks held on this node or on any node below it, so a node is safe
    to evict exactly when ``lock_ref == 0``. ``last_access`` is a logical clock (a counter that
    the cache advances), not wall time, so that LRU order is deterministic in tests.
    ``eq=False`` keeps identity semantics: two nodes with equal keys are still different nodes.
    """

    key: tuple[int, ...]
    pages: list[int]
    parent: RadixNode | None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def path(self) -> list[RadixNode]:
        """This node and its ancestors, deepest first, root last."""
        nodes: list[RadixNode] = []
        node: RadixNode | None = self
        while node is not None:
            nodes.append(node)
            node = node.parent
        return nodes


@dataclass
class PrefixMatch:
    """The cached part of a token sequence.

    ``pages`` hold the KV of ``tokens[:num_tokens]`` in order, ``num_tokens == len(pages) *
    page_size`` (whole pages only), and ``node`` is the deepest node of the match: the one a
    request locks so that none of these pages can be evicted while it runs. Matching takes no
    references: the caller increfs ``pages`` for its request.
    """

    pages: list[int]
    num_tokens: int
    node: RadixNode


@runtime_checkable
class PrefixCache(Protocol):
    """The interface the engine uses; see ``RadixCache`` for the full contract of each method."""

    def attach(self, allocator: PageAllocator, page_size: int) -> None: ...

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch: ...

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> RadixNode: ...

    def lock(self, node: RadixNode) -> None: ...

    def unlock(self, node: RadixNode) -> None: ...

    def evict(self, num_pages: int) -> int: ...

    def flush(self) -> None: ...

    def evictable_pages(self) -> int: ...

    def referenced_pages(self) -> list[int]: ...

    @property
    def num_cached_pages(self) -> int: ...

    @property
    def num_evicted_pages(self) -> int: ...

    @property
    def num_nodes(self) -> int: ...

    def to_dot(self, decode: Callable[[Sequence[int]], str] | None = None) -> str: ...


class NoPrefixCache:
    """The cache that shares nothing: used when ``enable_prefix_cache=False``.

    Every match is empty and ends at a dummy root, so the engine's lock/insert/unlock sequence
    runs unchanged; the root still counts locks so that an unbalanced ``unlock`` is caught here
    too and not only when the radix cache is switched on.
    """

    def __init__(self) -> None:
        self.root = RadixNode(key=(), pages=[], parent=None)

    def attach(self, allocator: PageAllocator, page_size: int) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        return PrefixMatch(pages=[], num_tokens=0, node=self.root)

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> RadixNode:
        return self.root

    def lock(self, node: RadixNode) -> None:
        node.lock_ref += 1

    def unlock(self, node: RadixNode) -> None:
        if node.lock_ref <= 0:
            raise RuntimeError("unlock of a node that is not locked (lock_ref would go negative)")
        node.lock_ref -= 1

    def evict(self, num_pages: int) -> int:
        return 0

    def flush(self) -> None:
        pass

    def evictable_pages(self) -> int:
        return 0

    def referenced_pages(self) -> list[int]:
        return []

    @property
    def num_cached_pages(self) -> int:
        return 0

    @property
    def num_evicted_pages(self) -> int:
        return 0

    @property
    def num_nodes(self) -> int:
        return 0

    def to_dot(self, decode: Callable[[Sequence[int]], str] | None = None) -> str:
        return 'digraph radix {\n  n0 [label="root (prefix cache disabled)"];\n}\n'
