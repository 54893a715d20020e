"""Continuous batching and the scheduling policies."""

from vibe_sgl_lite.scheduler.scheduler import ScheduledBatch, Scheduler

FCFSScheduler = Scheduler

SCHEDULERS: dict[str, type[Scheduler]] = {"fcfs": FCFSScheduler}


def make_scheduler(policy: str) -> Scheduler:
    if policy not in SCHEDULERS:
        raise ValueError(f"schedule_policy must be one of {', '.join(SCHEDULERS)}, got {policy!r}")
    return SCHEDULERS[policy]()


__all__ = ["FCFSScheduler", "SCHEDULERS", "ScheduledBatch", "Scheduler", "make_scheduler"]
