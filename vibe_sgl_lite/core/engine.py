"""``Engine``: the step loop that turns requests into tokens.

    add_request(prompt, params)     tokenise, validate, enqueue
    step():
        Scheduler.schedule()        which requests run, how many tokens each
        ForwardBatch.build(...)     one flat batch, no padding
        model(batch, pool, attn)    logits of the rows that sample
        Sampler.sample(...)         one token per sampling row, per-request params
        _append_token(...)          stop checks, detokenise, release text, retire finished

It owns the page allocator, the prefix cache, the scheduler and an executor that holds the model
and its KV pool (in this process, or sharded over worker processes). It is synchronous and
single-threaded: ``ModelRunner`` drives it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from vibe_sgl_lite.batch.forward_batch import BatchRow
from vibe_sgl_lite.cache.base import NoPrefixCache, PrefixCache
from vibe_sgl_lite.core.config import EngineConfig
from vibe_sgl_lite.core.executor import LocalExecutor, ModelExecutor, kv_cache_dtype
from vibe_sgl_lite.core.request import Request, RequestState
from vibe_sgl_lite.core.tokenizer import IncrementalDetokenizer, StopStringMatcher, Tokenizer
from vibe_sgl_lite.kernels.attention import AttentionBackend, get_attention_backend
from vibe_sgl_lite.memory.kv_pool import KVPool
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.models.config import ModelConfig
from vibe_sgl_lite.sampling import Sampler, SamplingParams, TokenLogprobs
from vibe_sgl_lite.scheduler.scheduler import Scheduler
from vibe_sgl_lite.utils.memory import available_memory_bytes


class Engine:
    def __init__(
        self,
        model_path: str | Path,
        config: EngineConfig,
        *,
        scheduler: Scheduler | None = None,
        cache: PrefixCache | None = None,
        attention_backend: str | AttentionBackend | None = None,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        self.model_config = mc = ModelConfig.from_path(model_path)  # folder or .gguf
        self.tokenizer = Tokenizer.from_pretrained(model_path)
        self.eos_token_ids = self.tokenizer.eos_token_ids | set(mc.eos_token_ids)

        num_pages = self._plan_kv_pages()
        self.allocator = PageAllocator(num_pages)
        self.max_model_len = min(
            config.max_model_len or mc.max_position_embeddings,
            mc.max_position_embeddings,
            num_pages * config.page_size,
        )
        self.cache = cache if cache is not None else self._default_cache()
        self.cache.attach(self.allocator, config.page_size)
        self.scheduler = scheduler if scheduler is not None else self._default_scheduler()
        self.scheduler.attach(config, self.allocator, self.cache)
        self.attention = get_attention_backend(attention_backend or config.attention_backend)
        self.executor = self._make_executor(model_path, num_pages)
        self.sampler = Sampler()

        self._next_request_id = 0
        self.counters = dict(
            num_requests=0,
            num_prompt_tokens=0,
            num_generated_tokens=0,
            num_prefill_tokens_computed=0,
            num_decode_tokens_computed=0,
            num_steps=0,
        )
        self.finished_requests: list[Request] = []
        self._timing_sums: dict[str, float] = {}
        self._timing_counts: dict[str, int] = {}

    def _make_executor(self, model_path: str | Path, num_pages: int) -> ModelExecutor:
        if self.config.tp_size == 1 and self.config.ep_size == 1:
            return LocalExecutor(model_path, self.config, num_pages, self.attention)
        from vibe_sgl_lite.distributed import executor

        if executor.launched_by_torchrun():
            return executor.TorchrunExecutor(model_path, self.config, num_pages, self.attention)
        return executor.MultiprocessExecutor(model_path, self.config, num_pages, self.attention)

    @property
    def is_driver(self) -> bool:
        """False on torchrun ranks other than 0: they only serve their shard."""
        return bool(getattr(self.executor, "is_driver", True))

    def close(self) -> None:
        self.executor.close()

    def _default_cache(self) -> PrefixCache:
        if not self.config.enable_prefix_cache:
            return NoPrefixCache()
        from vibe_sgl_lite.cache.radix_cache import RadixCache

        return RadixCache()

    def _default_scheduler(self) -> Scheduler:
        from vibe_sgl_lite.scheduler import make_scheduler

        return make_scheduler(self.config.schedule_policy)

    def _plan_kv_pages(self) -> int:
        """Pool size: ``max_total_tokens`` if given, else a share of free memory (capped)."""
        cfg, mc = self.config, self.model_config
        if cfg.max_total_tokens is not None:
            return -(-cfg.max_total_tokens // cfg.page_size)
        per_token = KVPool.bytes_per_token(
            mc.num_hidden_layers, mc.num_key_value_heads, mc.head_dim, kv_cache_dtype(cfg)
        )
        budget_tokens = int(available_memory_bytes(self.device) * cfg.mem_fraction) // per_token
        max_len = cfg.max_model_len or mc.max_position_embeddings
        useful_tokens = cfg.max_running_requests * max_len
        tokens = max(min(budget_tokens, useful_tokens), cfg.page_size)
        return -(-tokens // cfg.page_size)

    # ---- requests in -------------------------------------------------------------------------

    def add_request(
        self, prompt: str | Sequence[int], params: SamplingParams, priority: int = 0
    ) -> Request:
        """Validate and enqueue; raises ``ValueError`` (naming the problem) before queueing."""
        prompt_ids = self._prompt_ids(prompt)
        req_id = self._next_request_id
        self._next_request_id += 1
        generator = None
        if not params.is_greedy:
            # An unseeded request still gets its own stream, derived from the runner's seed, so a
            # runner replays exactly. (The CPU generator keeps only 32 bits of a seed.)
            mixed = (self.config.seed * 2654435761 + req_id) % 2**32
            seed = params.seed if params.seed is not None else mixed
            generator = torch.Generator(self.device).manual_seed(seed)
        req = Request(req_id, prompt_ids, params, generator, arrival_order=req_id)
        req.priority = priority
        req.detokenizer = IncrementalDetokenizer(self.tokenizer, params.skip_special_tokens)
        req.stop_matcher = StopStringMatcher(list(params.stop or []))
        self.scheduler.add_request(req)
        self.counters["num_requests"] += 1
        self.counters["num_prompt_tokens"] += len(prompt_ids)
        return req

    def _prompt_ids(self, prompt: str | Sequence[int]) -> list[int]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt must not be empty")
            ids = self.tokenizer.encode(prompt)
        elif isinstance(prompt, Sequence) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in prompt
        ):
            ids = [int(t) for t in prompt]
            vocab = self.model_config.vocab_size
            bad = [t for t in ids if not 0 <= t < vocab]
            if bad:
                raise ValueError(f"prompt token ids must be in [0, {vocab}), got {bad[0]}")
        else:
            raise ValueError("prompt must be a string or a list of token ids (ints)")
        if not ids:
            raise ValueError("prompt must not be empty")
        if len(ids) >= self.max_model_len:
            raise ValueError(
                f"prompt has {len(ids)} tokens; it must be shorter than max_model_len "
                f"({self.max_model_len}) to leave room for at least one generated token"
            )
        return ids

    # ---- one step ----------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    @torch.inference_mode()
    def step(self) -> list[Request]:
        """Run one forward over the scheduled batch; returns the requests that finished."""
        scheduled = self.scheduler.schedule()
        if not scheduled.requests:
            if self.scheduler.has_unfinished():
                raise RuntimeError(
                    "the scheduler could not schedule any request: the KV pool is too small "
                    f"({self.allocator.num_pages} pages of {self.config.page_size} tokens)"
                )
            return []
        now = time.perf_counter()
        rows: list[BatchRow] = []
        for req, n in zip(scheduled.requests, scheduled.num_new_tokens):
            start = req.num_computed_tokens
            sample = start + n == len(req.token_ids)
            rows.append(BatchRow(req.token_ids[start : start + n], start, req.page_table, sample))
            if req.first_scheduled_time is None:
                req.first_scheduled_time = now
            is_decode = n == 1 and sample and start >= req.num_prompt_tokens
            key = "num_decode_tokens_computed" if is_decode else "num_prefill_tokens_computed"
            self.counters[key] += n
        logits = self.executor.execute(rows)
        self.counters["num_steps"] += 1

        samplers = [r for r, row in zip(scheduled.requests, rows) if row.sample]
        for req, n in zip(scheduled.requests, scheduled.num_new_tokens):
            req.num_computed_tokens += n
        if not samplers:
            return []
        out = self.sampler.sample(
            logits,
            [r.params for r in samplers],
            [r.generator for r in samplers],
            [r.prompt_ids for r in samplers],
            [r.output_ids for r in samplers],
        )
        finished = []
        for req, token, logprob in zip(samplers, out.token_ids, out.logprobs):
            if self._append_token(req, token, logprob):
                finished.append(req)
        for req in finished:
            self.scheduler.finish(req)
        self.finished_requests.extend(finished)
        return finished

    def _append_token(self, req: Request, token: int, logprob: TokenLogprobs | None) -> bool:
        """Record a sampled token; returns True when the request has finished."""
        req.token_ids.append(token)
        if logprob is not None:
            req.logprobs.append(logprob)
        if req.first_token_time is None:
            req.first_token_time = time.perf_counter()
        self.counters["num_generated_tokens"] += 1
        params = req.params
        reason = None
        if (not params.ignore_eos and token in self.eos_token_ids) or (
            token in (params.stop_token_ids or [])
        ):
            reason = "stop"
        else:
            text, stopped = req.stop_matcher.feed(req.detokenizer.add(token))
            self._release_text(req, text)
            if stopped:
                reason = "stop"
        if reason is None and (
            req.num_output_tokens >= params.max_tokens or len(req.token_ids) >= self.max_model_len
        ):
            reason = "length"
        if reason is None:
            return False
        if not req.stop_matcher.stopped:
            text, stopped = req.stop_matcher.feed(req.detokenizer.flush())
            self._release_text(req, text if stopped else text + req.stop_matcher.flush())
        req.state = RequestState.FINISHED
        req.finish_reason = reason
        req.finish_time = time.perf_counter()
        for name, seconds in req.metrics().items():
            self._timing_sums[name] = self._timing_sums.get(name, 0.0) + seconds
            self._timing_counts[name] = self._timing_counts.get(name, 0) + 1
        return True

    @staticmethod
    def _release_text(req: Request, text: str) -> None:
        req.text += text
        req.pending_text += text

    # ---- scoring -----------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, prompt: str | Sequence[int]) -> list[float]:
        """Log-probability of each token given the ones before it (``len - 1`` values).

        One forward over the whole text, on pages borrowed from the allocator for the duration
        of the call, outside the scheduler: the same model code and KV path as generation.
        """
        ids = self._prompt_ids(prompt)
        pages = self.allocator.alloc(-(-len(ids) // self.config.page_size))
        try:
            logits = self.executor.execute([BatchRow(ids, 0, pages, False, all_logits=True)])
        finally:
            self.allocator.free(pages)
        logprobs = torch.log_softmax(logits[:-1].float(), dim=-1)
        target = torch.tensor(ids[1:], device=logprobs.device)
        return logprobs.gather(1, target[:, None]).squeeze(1).tolist()

    # ---- introspection -----------------------------------------------------------------------

    def abort(self, req: Request) -> None:
        """Drop a request wherever it is (a streaming client went away)."""
        if req in self.scheduler.running:
            self.scheduler.finish(req)
        elif req in self.scheduler.waiting:
            self.scheduler.waiting.remove(req)
        req.state = RequestState.FINISHED
        req.finish_reason = req.finish_reason or "abort"

    def _pages_held_only_by_cache(self) -> int:
        """Pages the prefix cache keeps alive although no running request uses them."""
        nodes = getattr(self.cache, "nodes", None)
        if nodes is None:
            return 0
        return sum(1 for n in nodes() for p in n.pages if self.allocator.refcount(p) == 1)

    def get_stats(self) -> dict[str, float | int]:
        stats: dict[str, float | int] = dict(self.counters)
        stats["num_cached_tokens"] = self.scheduler.num_cached_tokens
        stats["num_preemptions"] = self.scheduler.num_preemptions
        stats["num_running_requests"] = len(self.scheduler.running)
        stats["num_waiting_requests"] = len(self.scheduler.waiting)
        stats["kv_pages_total"] = self.allocator.num_pages
        stats["kv_pages_free"] = self.allocator.num_free
        stats["page_size"] = self.config.page_size
        stats["max_model_len"] = self.max_model_len
        stats["num_cached_pages"] = self._pages_held_only_by_cache()
        stats["num_evicted_pages"] = self.cache.num_evicted_pages
        admitted = self.scheduler.num_admitted_tokens
        stats["cache_hit_rate"] = self.scheduler.num_cached_tokens / admitted if admitted else 0.0
        for name in ("queue_time", "time_to_first_token", "time_per_output_token"):
            count = self._timing_counts.get(name, 0)
            stats[f"mean_{name}"] = self._timing_sums.get(name, 0.0) / count if count else 0.0
        return stats
