"""``Engine``: the step loop that turns requests into tokens.

    add_request(prompt, params)         tokenise, validate, enqueue
    step():
        scheduler.schedule()            which requests run, how many tokens each   scheduler/
        scheduler.rows(scheduled)       each request's share of one flat batch     batch/
        executor.execute(rows)          one forward, logits of the sampling rows   models/, kernels/
        sampler.sample(logits, ...)     one token per row, per-request params      sampling/
        outputs.process(req, token)     stops, finish reason, text, timings        core/output.py
        scheduler.cache_computed(...)   completed pages become shareable           cache/
        scheduler.finish(req)           pages to the prefix cache or the free list

With ``speculative_algorithm`` set, a ``Speculator`` (speculative/) adds drafts to decode rows
before the forward and verifies them after it: a row then yields up to ``k + 1`` tokens, each
processed in turn, and ``scheduler.accept`` drops the rejected drafts' slots.

It owns the page allocator, the prefix cache, the scheduler, the output processor and an
executor that holds the model and its KV pool (in this process, or sharded over worker
processes). It is synchronous and single-threaded: ``ModelRunner`` drives it. Generation-control
plugins run only for requests that use them; sparse attention, pruning and score capture live
in ``research/`` and run only when a setting asks for them.

Set ``VIBE_SGL_LITE_CHECK_INVARIANTS=1`` to check after every step that each page's reference
count equals its holders (running requests plus prefix-cache nodes) and that no page is both
free and held: slow, meant for tests and debugging.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from vibe_sgl_lite.cache.base import NoPrefixCache, PrefixCache
from vibe_sgl_lite.cache.radix_cache import RadixCache
from vibe_sgl_lite.config import EngineConfig
from vibe_sgl_lite.core.capacity import max_model_len, plan_kv_pages
from vibe_sgl_lite.core.executor import ModelExecutor
from vibe_sgl_lite.core.lora import AdapterRegistry
from vibe_sgl_lite.core.output import OutputProcessor
from vibe_sgl_lite.core.scoring import PromptScorer
from vibe_sgl_lite.core.tokenizer import Tokenizer
from vibe_sgl_lite.kernels.attention import (
    AttentionBackend,
    PagedAttentionBackend,
    resolve_attention_backend,
)
from vibe_sgl_lite.kernels.sparse import ScoreCapture
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.models.worker import ModelWorker, WorkerSpec
from vibe_sgl_lite.research import DENSE_STATS, MethodSpec, ResearchLayer, build_research_layer
from vibe_sgl_lite.sampling import Sampler, SamplingParams
from vibe_sgl_lite.sampling.builtin import builtin_plugins
from vibe_sgl_lite.sampling.plugins import Plugin, PluginSet
from vibe_sgl_lite.scheduler import Scheduler, make_scheduler
from vibe_sgl_lite.scheduler.request import Request
from vibe_sgl_lite.speculative.build import SpeculationTarget, build_speculator

CHECK_INVARIANTS_ENV = "VIBE_SGL_LITE_CHECK_INVARIANTS"


class Engine:
    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        *,
        scheduler: Scheduler | None = None,
        cache: PrefixCache | None = None,
        attention_backend: AttentionBackend | None = None,
        attention_method: MethodSpec | None = None,
        plugins: Sequence[Plugin] = (),
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.set_num_threads(config.threads_per_rank)
        torch.manual_seed(config.seed)
        self.model_config = ModelConfig.from_path(model_path)  # folder or .gguf
        self.tokenizer = Tokenizer.from_pretrained(model_path)
        self.eos_token_ids = self.tokenizer.eos_token_ids | set(self.model_config.eos_token_ids)

        num_pages = plan_kv_pages(config, self.model_config, self.device)
        self.allocator = PageAllocator(num_pages)
        self.max_model_len = max_model_len(config, self.model_config, num_pages)
        if cache is None:
            cache = RadixCache() if config.enable_prefix_cache else NoPrefixCache()
        self.cache = cache
        self.cache.attach(self.allocator, config.page_size)
        self.scheduler = (
            scheduler if scheduler is not None else make_scheduler(config.schedule_policy)
        )
        self.scheduler.attach(config, self.allocator, self.cache)
        self.attention = attention_backend or resolve_attention_backend(
            config.attention_backend, self.device, config.kv_cache_dtype
        )
        if isinstance(self.attention, PagedAttentionBackend):
            self.attention.check_supported(
                self.model_config.head_dim, config.torch_dtype, config.kv_torch_dtype, self.device
            )
        # Sparse attention, pruning, capture: an opt-in layer around the backend (research/).
        self.research = build_research_layer(
            self.attention,
            config,
            self.model_config.num_hidden_layers,
            self.allocator,
            self.scheduler,
            attention_method,
        )
        self.sampler = Sampler()
        self.plugins = PluginSet(
            [*builtin_plugins(self.tokenizer.hf, eos_token_ids=self.eos_token_ids), *plugins]
        )
        self.runner_has_plugins = bool(plugins)  # else only requests that ask meet the plugins
        self.outputs = OutputProcessor(self.tokenizer, self.eos_token_ids, self.max_model_len)
        self.loras = AdapterRegistry(self.model_config, config)  # LoRA adapters (core/lora.py)
        # Last: everything that can refuse a setting has done so before worker processes start.
        backend = self.research.attention if self.research is not None else self.attention
        self.executor = self._make_executor(WorkerSpec(model_path, config, num_pages, backend))
        self.scorer = PromptScorer(self.executor, self.allocator, self.cache, config.page_size)
        self.speculator = build_speculator(
            SpeculationTarget(
                config,
                self.model_config,
                lambda path: Tokenizer.from_pretrained(path).hf.get_vocab(),
                num_pages,
                self.max_model_len,
                backend,
                self.executor,
                str(model_path),
            )
        )
        if self.speculator is not None:
            self.scheduler.on_release.append(self.speculator.release)
        self.check_invariants = os.environ.get(CHECK_INVARIANTS_ENV, "") not in ("", "0")

        self._next_request_id = 0
        self.counters = {"num_requests": 0, "num_prompt_tokens": 0}

    def start_capture(self, layers: Sequence[int] | None = None) -> ScoreCapture:
        """Record raw decode scores from now on (``ModelRunner.capture_attention``)."""
        if self.research is None:
            research = ResearchLayer(
                self.attention, self.config, self.model_config.num_hidden_layers, self.allocator
            )
            self.research = research
            assert isinstance(self.executor, ModelWorker)  # ResearchLayer refused tp_size > 1
            self.executor.attention = research.attention
        return self.research.start_capture(layers)

    def stop_capture(self) -> None:
        if self.research is not None:
            self.research.stop_capture()
            if self.research.idle:  # built for the capture alone: back to the plain backend
                assert isinstance(self.executor, ModelWorker)
                self.executor.attention = self.attention
                self.research = None

    def _make_executor(self, spec: WorkerSpec) -> ModelExecutor:
        if spec.config.world_size == 1:
            return ModelWorker(spec)
        from vibe_sgl_lite.distributed import start_parallel_executor

        return start_parallel_executor(spec)

    @property
    def is_driver(self) -> bool:
        """False on torchrun ranks other than 0: they only serve their shard."""
        return self.executor.is_driver

    def close(self) -> None:
        self.executor.close()

    # ---- requests in -------------------------------------------------------------------------

    def add_request(
        self, prompt: str | Sequence[int], params: SamplingParams, priority: int = 0
    ) -> Request:
        """Validate and enqueue; raises ``ValueError`` (naming the problem) before queueing."""
        params = params.validated_copy()
        lora = None if params.lora_name is None else self.loras.resolve(params.lora_name)
        prompt_ids = self.tokenizer.prompt_ids(
            prompt, self.model_config.vocab_size, self.max_model_len
        )
        scored = None  # computed before anything else holds state for the request
        if params.prompt_logprobs is not None:
            scored = self.scorer.logprobs(prompt_ids, params.prompt_logprobs, lora)
        req_id = self._next_request_id
        self._next_request_id += 1
        generator = None
        if not params.is_greedy:
            # An unseeded request still gets its own stream, derived from the runner's seed, so a
            # runner replays exactly. (The CPU generator keeps only 32 bits of a seed.)
            mixed = (self.config.seed * 2654435761 + req_id) % 2**32
            seed = params.seed if params.seed is not None else mixed
            generator = torch.Generator(self.device).manual_seed(seed)
        if params.needs_plugins or self.runner_has_plugins:
            self.plugins.add_request(req_id, params, self.model_config.vocab_size)
        req = Request(
            req_id,
            prompt_ids,
            params,
            generator,
            arrival_order=req_id,
            priority=priority,
            lora=lora,
        )
        req.prompt_logprobs = scored
        self.outputs.add_request(req)
        self.scheduler.add_request(req)
        self.counters["num_requests"] += 1
        self.counters["num_prompt_tokens"] += len(prompt_ids)
        return req

    def load_lora(self, name: str, path: str | Path) -> None:
        """Make the PEFT adapter in ``path`` available as ``lora_name=name``."""
        self.loras.load(name, path)

    def unload_lora(self, name: str) -> None:
        """Forget adapter ``name``; refused while an unfinished request uses it."""
        unfinished = self.scheduler.running + self.scheduler.waiting
        self.loras.unload(name, (r.lora for r in unfinished))

    # ---- one step ----------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Run one forward over the scheduled batch; returns the requests that finished."""
        speculator = self.speculator
        if speculator is not None:
            speculator.plan(self.scheduler.running, self.plugins.active)
        scheduled = self.scheduler.schedule()
        if not scheduled.requests:
            return self._idle()
        if speculator is not None:
            speculator.propose(scheduled.requests)
        rows = self.scheduler.rows(scheduled)  # advances each request's num_computed_tokens
        if speculator is not None:
            logits = speculator.execute(self.executor, scheduled.requests, rows)
        else:
            logits = self.executor.execute(rows)
        sampling_reqs = [req for req, row in zip(scheduled.requests, rows) if row.sample]
        finished = self._sample_and_process(logits, sampling_reqs)
        self.scheduler.cache_computed(scheduled)  # pages whose K/V now exist become shareable
        for req in finished:
            self.scheduler.finish(req)
            if req.request_id in self.plugins.active:
                self.plugins.release(req.request_id)
        if self.check_invariants:
            self.assert_invariants()
        return finished

    def _idle(self) -> list[Request]:
        if self.scheduler.has_unfinished():
            raise RuntimeError(
                "the scheduler could not schedule any request: the KV pool is too small "
                f"({self.allocator.num_pages} pages of {self.config.page_size} tokens)"
            )
        return []

    def _sample_and_process(self, logits: torch.Tensor, requests: list[Request]) -> list[Request]:
        """Tokens for each request from its rows of ``logits`` (one row each; a verify row
        ``1 + len(req.draft_ids)``), through the plugins of the requests that use some (which
        never speculate), then ``OutputProcessor`` token by token; returns the finished ones."""
        controlled, errors = logits, {}
        if self.plugins.active:
            step = self.plugins.process_logits(logits, requests)
            controlled, errors = step.logits, step.errors
        if self.speculator is not None and any(r.draft_ids for r in requests):
            verified = self.speculator.verify(controlled, logits, requests)
            tokens = [v.token_ids for v in verified]
            logprobs = [v.logprobs for v in verified]
        else:
            sampled = self.sampler.sample(
                controlled,
                [r.params for r in requests],
                [r.generator for r in requests],
                [r.prompt_ids for r in requests],
                [r.output_ids for r in requests],
                raw_logits=logits,
            )
            tokens = [[t] for t in sampled.token_ids]
            logprobs = [[lp] for lp in sampled.logprobs]
        if self.research is not None:
            self.research.after_sample(requests)
        reasons: list[str | None] = [None] * len(requests)
        if self.plugins.active:
            reasons = self.plugins.after_token(requests, [t[0] for t in tokens], errors)
        finished = []
        for i, req in enumerate(requests):
            if i in errors:
                self.outputs.fail(req, errors[i])
                finished.append(req)
                continue
            num_done = 0
            for token, token_logprobs in zip(tokens[i], logprobs[i]):
                num_done += 1
                if self.outputs.process(req, token, token_logprobs, reasons[i]):
                    finished.append(req)
                    break
            if req.draft_ids:  # drafts that are now output keep their K/V; the rest go
                kept = min(len(tokens[i]) - 1, num_done)
                self.scheduler.accept(req, kept)
                assert self.speculator is not None
                self.speculator.accepted(req, kept)
        return finished

    # ---- scoring -----------------------------------------------------------------------------

    def score(self, prompt: str | Sequence[int]) -> list[float]:
        """Log-probability of each token given the ones before it (``len - 1`` values): one
        forward over the whole text outside the scheduler (``core/scoring.py``)."""
        ids = self.tokenizer.prompt_ids(prompt, self.model_config.vocab_size, self.max_model_len)
        return [lp.logprob for lp in self.scorer.logprobs(ids, 0) if lp is not None]

    # ---- leaving early, invariants, statistics -------------------------------------------

    def abort(self, req: Request) -> None:
        """Drop a request wherever it is (a streaming client went away); frees its pages."""
        self.scheduler.abort(req)
        self.outputs.abort(req)
        if req.request_id in self.plugins.active:
            self.plugins.release(req.request_id)

    def assert_invariants(self) -> None:
        """Every page is free or held, and its reference count equals its holders."""
        self.scheduler.check_invariants()

    def get_stats(self) -> dict[str, float | int]:
        stats: dict[str, float | int] = dict(self.counters)
        stats["num_generated_tokens"] = self.outputs.num_generated_tokens
        stats.update(self.scheduler.stats())
        stats["max_model_len"] = self.max_model_len
        stats.update(self.outputs.mean_timings())
        stats.update(self.plugins.stats())
        stats.update(self.research.stats() if self.research is not None else DENSE_STATS)
        if self.speculator is not None:
            stats.update(self.speculator.stats())
        return stats
