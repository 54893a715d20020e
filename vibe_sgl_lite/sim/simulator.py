"""``EngineSim``: the engine's own scheduler, prefix cache and page allocator on a virtual clock.

The engine's step (``core/engine.py``) and one simulated step, side by side::

    Engine.step                                   EngineSim.step
    scheduled = scheduler.schedule()              the same call, the same objects
    rows = scheduler.rows(scheduled)              the same call
    logits = executor.execute(rows)               now += cost.step_seconds(composition of rows)
    scheduler.cache_computed(scheduled)           the same call
    sample; outputs.process(req, token)           append a dummy token; "length" at the trace's
                                                  output length
    scheduler.finish(req)                         the same call

So every decision (admission order, chunk sizes, prefix matches, evictions, preemptions) is
made by the code the engine runs: a scheduler change shows up here without touching this file.
What is not simulated: the model's numbers (tokens are dummies, so a request always runs to its
trace length: no EOS, no stop strings), plugins and sparse attention, and the time spent outside
steps other than ``add_request`` (tokenising text, HTTP, the engine loop's queue).

**Evicting ahead** (``evict_ahead``, off by default). Once the pool is full of cached prefixes
the scheduler calls ``RadixCache.evict`` for nearly every new page, and each call heaps every
unlocked leaf. With ``evict_ahead=k`` the simulator, before a step whose pool has fewer than
``k`` free pages, calls the same ``cache.evict`` for ``k`` pages at once: the same
least-recently-used leaves go, a few steps early. A prefix that a request would have matched
within those steps is lost.

Times are virtual seconds: a request arriving during a step is seen by the next ``schedule``,
as in the engine, and its latency counts from its arrival.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vibe_sgl_lite.cache.base import NoPrefixCache, PrefixCache
from vibe_sgl_lite.cache.radix_cache import RadixCache
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.sampling import SamplingParams
from vibe_sgl_lite.scheduler import ScheduledBatch, Scheduler, make_scheduler
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.sim.cost import CostModel, StepComposition

DUMMY_TOKEN = 0
KV_SAMPLE_INTERVAL_S = 1.0
"""Virtual seconds between two samples of the KV pool's occupancy (``EngineSim.kv_samples``)."""


@dataclass
class RequestRecord:
    """One request's life in virtual seconds; ``None`` until it happens."""

    request_id: int
    arrival: float
    prompt_len: int
    output_len: int
    cached_tokens: int = 0
    preemptions: int = 0
    first_scheduled: float | None = None
    first_token: float | None = None
    finish: float | None = None

    @property
    def ttft(self) -> float:
        assert self.first_token is not None, f"request {self.request_id} has no token yet"
        return self.first_token - self.arrival

    @property
    def queue_time(self) -> float:
        assert self.first_scheduled is not None, f"request {self.request_id} never ran"
        return self.first_scheduled - self.arrival

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first (None for a one-token output)."""
        if self.output_len < 2 or self.finish is None or self.first_token is None:
            return None
        return (self.finish - self.first_token) / (self.output_len - 1)


@dataclass
class KVSample:
    """The pool at one instant: share of pages allocated (cached prefixes included), queues."""

    time: float
    used: float
    running: int
    waiting: int


@dataclass
class StepLog:
    """One step's decisions, for comparing with the engine: ``(request_id, num_new_tokens)``."""

    start: float
    seconds: float
    batch: list[tuple[int, int]] = field(default_factory=list)


class EngineSim:
    """One simulated engine; ``add`` requests, ``advance_to`` a time, ``drain`` at the end."""

    def __init__(
        self,
        config: EngineConfig,
        cost: CostModel,
        *,
        scheduler: Scheduler | None = None,
        cache: PrefixCache | None = None,
        log_steps: bool = False,
        evict_ahead: int = 0,
    ) -> None:
        if config.max_total_tokens is None:
            raise ValueError("max_total_tokens (the KV pool in tokens) must be set to simulate")
        self.config, self.cost = config, cost
        self.allocator = PageAllocator(config.max_total_tokens // config.page_size)
        if cache is None:
            cache = RadixCache() if config.enable_prefix_cache else NoPrefixCache()
        self.cache = cache
        self.cache.attach(self.allocator, config.page_size)
        self.scheduler = (
            scheduler if scheduler is not None else make_scheduler(config.schedule_policy)
        )
        self.scheduler.attach(config, self.allocator, self.cache)
        self.now = 0.0
        self.busy_seconds = 0.0
        self.records: dict[int, RequestRecord] = {}
        self.kv_samples: list[KVSample] = []
        self.steps: list[StepLog] | None = [] if log_steps else None
        self._params = SamplingParams(max_tokens=1 << 30, ignore_eos=True)
        self._next_sample = 0.0
        self.evict_ahead = evict_ahead

    # ---- requests in -------------------------------------------------------------------------

    def add(self, request_id: int, prompt_ids: list[int], output_len: int, arrival: float) -> None:
        """Queue a request that arrived at ``arrival`` (<= ``now``: it waits for the next step).

        The engine thread spends ``cost.per_request`` seconds adding it (``Engine.add_request``)
        before its next step, so the clock moves on by that much."""
        req = Request(request_id, prompt_ids, self._params, arrival_order=request_id)
        req.arrival_time = arrival
        self.records[request_id] = RequestRecord(request_id, arrival, len(prompt_ids), output_len)
        self.scheduler.add_request(req)
        self.now = max(self.now, arrival) + self.cost.per_request
        self.busy_seconds += self.cost.per_request

    @property
    def load(self) -> int:
        """Requests queued or running: what a least-loaded router compares."""
        return len(self.scheduler.waiting) + len(self.scheduler.running)

    # ---- the clock ---------------------------------------------------------------------------

    def advance_to(self, time: float) -> None:
        """Run steps while one can start before ``time``; idle until ``time`` otherwise."""
        while self.now < time and self.scheduler.has_unfinished():
            self.step()
        self.now = max(self.now, time)

    def drain(self) -> None:
        """Run until every queued request has finished."""
        while self.scheduler.has_unfinished():
            self.step()

    def step(self) -> None:
        """One engine step (see the module docstring); advances ``now`` by its modelled cost."""
        if self.allocator.num_free < self.evict_ahead:
            self.cache.evict(self.evict_ahead)
        scheduled = self.scheduler.schedule()
        for victim in scheduled.preempted:
            self.records[victim.request_id].preemptions += 1
        if not scheduled.requests:
            raise RuntimeError(
                "the scheduler could not schedule any request: the KV pool is too small "
                f"({self.allocator.num_pages} pages of {self.config.page_size} tokens)"
            )
        start = self.now
        rows = self.scheduler.rows(scheduled)
        seconds = self.cost.step_seconds(StepComposition.from_rows(rows))
        self.now += seconds
        self.busy_seconds += seconds
        self.scheduler.cache_computed(scheduled)
        if self.steps is not None:
            self.steps.append(StepLog(start, seconds, _decisions(scheduled)))
        for req, row in zip(scheduled.requests, rows):
            record = self.records[req.request_id]
            if record.first_scheduled is None:
                record.first_scheduled = start
                record.cached_tokens = req.num_cached_tokens
            if not row.sample:
                continue
            req.token_ids.append(DUMMY_TOKEN)
            if record.first_token is None:
                record.first_token = self.now
            if req.num_output_tokens >= record.output_len:
                record.finish = self.now
                self.scheduler.finish(req)
        if self.now >= self._next_sample:
            self._sample_kv()

    def _sample_kv(self) -> None:
        used = 1.0 - self.allocator.num_free / max(1, self.allocator.num_pages)
        s = self.scheduler
        self.kv_samples.append(KVSample(self.now, used, len(s.running), len(s.waiting)))
        self._next_sample = self.now + KV_SAMPLE_INTERVAL_S

    def check_invariants(self) -> None:
        """The engine's own check: every page free or held, refcounts equal holders."""
        self.scheduler.check_invariants()


def _decisions(batch: ScheduledBatch) -> list[tuple[int, int]]:
    return [(r.request_id, n) for r, n in zip(batch.requests, batch.num_new_tokens)]
