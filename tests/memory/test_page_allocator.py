"""PageAllocator: refcounts never negative, pages conserved, no page both free and used."""

from __future__ import annotations

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from vibe_sgl_lite.memory import KVPool, OutOfPagesError, PageAllocator

pytestmark = pytest.mark.unit


def test_alloc_free_roundtrip() -> None:
    a = PageAllocator(4)
    pages = a.alloc(3)
    assert len(set(pages)) == 3 and a.num_free == 1
    a.incref(pages[:1])
    a.free(pages)
    assert a.num_free == 3 and a.refcount(pages[0]) == 1
    a.free(pages[:1])
    assert a.num_free == 4
    a.check_invariants()


def test_errors() -> None:
    a = PageAllocator(2)
    with pytest.raises(OutOfPagesError):
        a.alloc(3)
    p = a.alloc(1)
    a.free(p)
    with pytest.raises(RuntimeError, match="double free"):
        a.free(p)
    with pytest.raises(RuntimeError, match="incref of free page"):
        a.incref(p)
    with pytest.raises(ValueError, match="num_pages"):
        PageAllocator(0)


def test_kv_pool_layout() -> None:
    import torch

    pool = KVPool(2, 3, 4, 2, 8, torch.float32)
    k, v = pool.layer(1)
    assert k.shape == (12, 2, 8)
    k[5] = 1.0  # slot 5 = page 1, offset 1
    assert pool.k[1][1, 1].eq(1.0).all() and pool.k[0].eq(0).all()
    assert KVPool.bytes_per_token(2, 2, 8, torch.float32) == 2 * 2 * 2 * 8 * 4


class AllocatorMachine(RuleBasedStateMachine):
    """Holders take and release pages at random; the model tracks who holds what."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = PageAllocator(8)
        self.holders: list[list[int]] = []

    @rule(n=st.integers(0, 4))
    def allocate(self, n: int) -> None:
        if n > self.alloc.num_free:
            with pytest.raises(OutOfPagesError):
                self.alloc.alloc(n)
        else:
            self.holders.append(self.alloc.alloc(n))

    @precondition(lambda self: self.holders)
    @rule(i=st.integers(0, 100))
    def share(self, i: int) -> None:
        pages = self.holders[i % len(self.holders)]
        self.alloc.incref(pages)
        self.holders.append(list(pages))

    @precondition(lambda self: self.holders)
    @rule(i=st.integers(0, 100))
    def release(self, i: int) -> None:
        self.alloc.free(self.holders.pop(i % len(self.holders)))

    @invariant()
    def refcounts_match_holders(self) -> None:
        self.alloc.check_invariants()
        for p in range(self.alloc.num_pages):
            assert self.alloc.refcount(p) == sum(h.count(p) for h in self.holders)
        used = {p for h in self.holders for p in h}
        assert self.alloc.num_free + len(used) == self.alloc.num_pages


TestAllocatorMachine = AllocatorMachine.TestCase
