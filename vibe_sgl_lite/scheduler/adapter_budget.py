"""``AdapterBudget``: how many distinct LoRA adapters one step may hold.

The workers keep ``max_loras_per_batch`` adapter slots in every ``LoRALinear``
(``models/lora/manager.py``): a step may name at most that many distinct adapters. Every running
request is in every step, so bounding the running set's adapters bounds each step's. The
scheduler consults ``admits`` before admitting a waiting request; one that would bring in an
adapter too many waits, while those behind it (on the base model, or on an adapter already
running) may still be admitted.

Only an engine with LoRA enabled has a budget (``Scheduler.attach``); without one the scheduler
never calls into this module.
"""

from __future__ import annotations

from collections.abc import Iterable

from vibe_sgl_lite.scheduler.request import Request


class AdapterBudget:
    """At most ``max_loras_per_batch`` distinct adapters among the running requests."""

    def __init__(self, max_loras_per_batch: int) -> None:
        self.max_loras_per_batch = max_loras_per_batch

    def admits(self, req: Request, running: Iterable[Request]) -> bool:
        """Would admitting ``req`` beside ``running`` keep the adapters within the budget?"""
        if req.lora is None:
            return True
        in_use = {r.lora for r in running if r.lora is not None}
        return req.lora in in_use or len(in_use) < self.max_loras_per_batch
