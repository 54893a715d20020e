"""``Request``: one generation request and everything the engine tracks about it.

Life cycle::

    WAITING --admitted by the scheduler--> RUNNING --stop / length--> FINISHED
       ^                                      |
       +------------ preempted ---------------+   (pages freed; recomputed on re-admission)

A request's tokens are ``token_ids = prompt + output``. ``num_computed_tokens`` of them have
their K/V in the pool (through ``page_table``); each step computes the next chunk. A request
samples a token whenever a step brings ``num_computed_tokens`` up to ``len(token_ids)``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from vibe_sgl_lite.batch.forward_batch import AdapterRef
from vibe_sgl_lite.cache.base import RadixNode
from vibe_sgl_lite.sampling import SamplingParams, TokenLogprobs

FREED_PAGE = -1
"""A ``page_table`` entry whose page token pruning gave back: its tokens are never read again."""


class RequestState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: int
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None = None
    arrival_order: int = 0
    priority: int = 0  # smaller runs first under schedule_policy="priority"
    enqueue_step: int = 0  # scheduler step at which it last started waiting
    lora: AdapterRef | None = None  # the LoRA adapter it runs under (None: the base model)

    state: RequestState = RequestState.WAITING
    token_ids: list[int] = field(default_factory=list)
    page_table: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0
    cache_node: RadixNode | None = None  # the prefix-cache node this request keeps locked
    # Tokens whose K/V may be shared through the prefix cache (None: every computed one); token
    # pruning lowers it (research/layer.py).
    max_cached_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None  # why, when finish_reason == "error"
    logprobs: list[TokenLogprobs] = field(default_factory=list)
    # SamplingParams.prompt_logprobs: one per prompt token, the first None (core/scoring.py)
    prompt_logprobs: list[TokenLogprobs | None] | None = None

    # Speculative decoding (speculative/): slots reserved for drafts in the next decode, the
    # drafts proposed for this step (``draft_probs [k, V]``: the distribution each was drawn
    # from, None when proposed deterministically), and the request's running totals.
    num_draft_slots: int = 0
    draft_ids: list[int] = field(default_factory=list)
    draft_probs: torch.Tensor | None = None
    num_verify_rows: int = 0
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0

    text: str = ""  # text released so far (stop strings cut, incomplete UTF-8 held back)
    pending_text: str = ""  # released but not yet taken by a streaming reader

    arrival_time: float = field(default_factory=time.perf_counter)
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finish_time: float | None = None
    first_admission_cached_tokens: int | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids) :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_ids)

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    def cache_key(self, num_tokens: int) -> list[int]:
        """The prefix-cache key of the first ``num_tokens`` tokens: the token ids, with the
        adapter folded into the first one (``uid << 32 | token``).

        The same tokens under two adapters (or an adapter and the base) have different K/V, so
        they must never share a path of the radix tree; every path starts with its first page,
        so a distinct first token separates them from the root down. The base keeps plain ids.
        """
        tokens = self.token_ids[:num_tokens]
        if self.lora is not None and tokens:
            tokens[0] |= self.lora.uid << 32
        return tokens

    def take_text(self) -> str:
        """The text released since the last call, cleared: a streaming reader's next delta."""
        text, self.pending_text = self.pending_text, ""
        return text

    def metrics(self) -> dict[str, float]:
        """Queue time, time to first token and time per output token, in seconds; with
        speculative decoding, the draft tokens proposed and accepted."""
        out: dict[str, float] = {}
        if self.num_draft_tokens:
            out["spec_draft_tokens"] = self.num_draft_tokens
            out["spec_accepted_tokens"] = self.num_accepted_tokens
        if self.first_scheduled_time is not None:
            out["queue_time"] = self.first_scheduled_time - self.arrival_time
        if self.first_token_time is not None:
            out["time_to_first_token"] = self.first_token_time - self.arrival_time
            if self.finish_time is not None and self.num_output_tokens > 1:
                out["time_per_output_token"] = (self.finish_time - self.first_token_time) / (
                    self.num_output_tokens - 1
                )
        return out
