"""Scoring a prompt: the log-probability of each token given the tokens before it.

Evaluation harnesses rank the choices of a multiple-choice question by these numbers
(``SamplingParams.prompt_logprobs``, the completions API's ``echo`` with ``logprobs``), and
``Engine.score`` returns them for a whole text.

Why a forward of its own, outside the scheduler: a request's prefill samples from the logits of
its last prompt token only, and the prefix cache may serve the start of its prompt with no
forward at all, so the logits of most prompt positions never exist during generation. One extra
forward over the whole prompt, on pages borrowed from the allocator for the duration of the
call (``BatchRow(..., all_logits=True)``), computes every position with the same model code and
KV path as generation. It costs about one more prefill of the prompt, plus a ``log_softmax``
over ``[prompt_len, vocab]`` logits; only requests that ask for prompt log-probabilities pay it.
"""

from __future__ import annotations

import torch

from vibe_sgl_lite.batch.forward_batch import AdapterRef, BatchRow
from vibe_sgl_lite.cache.base import PrefixCache
from vibe_sgl_lite.core.executor import ModelExecutor
from vibe_sgl_lite.memory.page_allocator import PageAllocator
from vibe_sgl_lite.sampling import TokenLogprobs

PromptLogprobs = list[TokenLogprobs | None]
"""One entry per prompt token; the first is ``None`` (nothing comes before it)."""


class PromptScorer:
    """Runs the scoring forward of a prompt and turns its logits into log-probabilities."""

    def __init__(
        self, executor: ModelExecutor, allocator: PageAllocator, cache: PrefixCache, page_size: int
    ) -> None:
        self.executor, self.allocator, self.cache = executor, allocator, cache
        self.page_size = page_size

    @torch.inference_mode()
    def logits(self, ids: list[int], lora: AdapterRef | None = None) -> torch.Tensor:
        """The logits ``[len(ids), vocab]`` of every position of ``ids``.

        Borrows the pages it needs, evicting unused prefix-cache pages first if the free list
        is short; raises ``ValueError`` when running requests hold too much of the pool."""
        need = -(-len(ids) // self.page_size)
        if self.allocator.num_free < need:
            self.cache.evict(need - self.allocator.num_free)
        if self.allocator.num_free < need:
            raise ValueError(
                f"prompt_logprobs needs {need} free KV pages to score the prompt, "
                f"{self.allocator.num_free} are free now"
            )
        pages = self.allocator.alloc(need)
        try:
            return self.executor.execute(
                [BatchRow(ids, 0, pages, False, all_logits=True, lora=lora)]
            )
        finally:
            self.allocator.free(pages)

    @torch.inference_mode()
    def logprobs(self, ids: list[int], top: int, lora: AdapterRef | None = None) -> PromptLogprobs:
        """Each token's log-probability given those before it, with the ``top`` most likely
        alternatives at its position (``log_softmax`` of the raw logits, as ``Sampler``)."""
        logprobs = torch.log_softmax(self.logits(ids, lora)[:-1].float(), dim=-1)
        target = torch.tensor(ids[1:], dtype=torch.long, device=logprobs.device)
        chosen = logprobs.gather(1, target[:, None]).squeeze(1).tolist()
        top_values, top_ids = logprobs.topk(top, dim=-1)
        result: PromptLogprobs = [None]
        for token, value, ids_row, values_row in zip(
            ids[1:], chosen, top_ids.tolist(), top_values.tolist()
        ):
            result.append(TokenLogprobs(token, value, list(zip(ids_row, values_row))))
        return result
