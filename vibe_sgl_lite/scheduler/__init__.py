"""Continuous batching (``Scheduler``) and the scheduling policies (``policies``)."""

from vibe_sgl_lite.scheduler.policies import (
    PREFIX_AWARE_MAX_WAITING,
    DFSWeightScheduler,
    FCFSScheduler,
    LPMScheduler,
    PriorityScheduler,
    RandomScheduler,
)
from vibe_sgl_lite.scheduler.request import Request, RequestState
from vibe_sgl_lite.scheduler.scheduler import ScheduledBatch, Scheduler

SCHEDULERS: dict[str, type[Scheduler]] = {
    "fcfs": FCFSScheduler,
    "lpm": LPMScheduler,
    "dfs-weight": DFSWeightScheduler,
    "priority": PriorityScheduler,
    "random": RandomScheduler,
}


def make_scheduler(policy: str) -> Scheduler:
    if policy not in SCHEDULERS:
        raise ValueError(f"schedule_policy must be one of {', '.join(SCHEDULERS)}, got {policy!r}")
    return SCHEDULERS[policy]()


__all__ = [
    "DFSWeightScheduler",
    "FCFSScheduler",
    "LPMScheduler",
    "PREFIX_AWARE_MAX_WAITING",
    "PriorityScheduler",
    "RandomScheduler",
    "Request",
    "RequestState",
    "SCHEDULERS",
    "ScheduledBatch",
    "Scheduler",
    "make_scheduler",
]
