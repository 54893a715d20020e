"""A hypothesis state machine over the engine with speculation: random prompts sharing
prefixes, random accept lengths (a proposer that lies at random), preemption from a small
pool; after every step the allocator and prefix-cache invariants hold, and nothing that was
not verified ever enters the radix tree."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from tests.speculative.conftest import SpeculativeRunner
from tests.speculative.scripted import script
from vibe_sgl_lite import ModelRunner
from vibe_sgl_lite.sampling import SamplingParams

BASES = [[5, 9, 13, 17, 21, 25, 29, 33, 37], [5, 9, 13, 40, 44], [70, 71, 72, 73]]
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def oracle(qwen3_dir: Path) -> dict[str, Any]:
    """Greedy continuations of every prompt the machine can send, without speculation."""
    prompts = [base[:n] for base in BASES for n in range(2, len(base) + 1)]
    with ModelRunner(qwen3_dir, page_size=2, num_threads=1) as runner:
        outs = runner.generate_outputs(
            prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
        )
    return {tuple(p): o.token_ids for p, o in zip(prompts, outs)}


def test_speculative_rollback_machine(
    speculative_runner: SpeculativeRunner, oracle: dict[tuple[int, ...], list[int]]
) -> None:
    class Machine(RuleBasedStateMachine):
        @initialize(
            page_size=st.sampled_from([1, 2, 3]),
            k=st.integers(1, 5),
            pages=st.integers(14, 40),
            seed=st.integers(0, 1000),
        )
        def start(self, page_size: int, k: int, pages: int, seed: int) -> None:
            longest = max(len(b) for b in BASES) + MAX_TOKENS + k  # one request always fits
            self.runner = speculative_runner(
                page_size=page_size,
                max_total_tokens=max(pages, -(-longest // page_size) + 1) * page_size,
                speculative_num_draft_tokens=k,
            )
            engine = self.runner.engine
            assert engine is not None
            self.engine = engine
            script(self.runner, oracle, 0.6, seed, vocab=300)
            valid = [list(p) + out for p, out in oracle.items()]
            cache = engine.cache
            original = cache.insert

            def checked_insert(tokens: Any, pages_: Any) -> Any:
                assert any(list(tokens) == v[: len(tokens)] for v in valid), tokens
                return original(tokens, pages_)

            cache.insert = checked_insert  # type: ignore[method-assign]
            self.requests: list[Any] = []

        @rule(base=st.integers(0, len(BASES) - 1), data=st.data())
        def add(self, base: int, data: st.DataObject) -> None:
            n = data.draw(st.integers(2, len(BASES[base])))
            max_tokens = data.draw(st.integers(1, MAX_TOKENS))
            params = SamplingParams(temperature=0, max_tokens=max_tokens)
            self.requests.append((self.engine.add_request(BASES[base][:n], params), max_tokens))

        @rule()
        def step(self) -> None:
            if self.engine.has_unfinished():
                self.engine.step()

        @invariant()
        def pages_and_outputs_are_consistent(self) -> None:
            if not hasattr(self, "engine"):
                return
            self.engine.assert_invariants()
            for req, max_tokens in self.requests:
                ref = oracle[tuple(req.prompt_ids)][:max_tokens]
                assert req.output_ids == ref[: len(req.output_ids)]
                assert req.num_computed_tokens <= len(req.token_ids)

        def teardown(self) -> None:
            if hasattr(self, "runner"):
                while self.engine.has_unfinished():
                    self.engine.step()
                for req, max_tokens in self.requests:
                    assert req.output_ids == oracle[tuple(req.prompt_ids)][:max_tokens]
                self.engine.cache.evict(10**9)
                assert self.engine.allocator.num_free == self.engine.allocator.num_pages
                self.runner.close()

    Machine.TestCase.settings = settings(
        max_examples=12,
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )
    Machine.TestCase().runTest()
