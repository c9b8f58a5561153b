"""Queueing policies: who gets the next engine slot.

``fifo`` is the engine's own arrival order (the baseline); ``fair`` is weighted fair
queueing by virtual token counters with strict priority classes.
"""

from __future__ import annotations

from fairlane.extproc.scheduling.base import QueuedRequest, QueueFull, Scheduler
from fairlane.extproc.scheduling.fair import FairScheduler
from fairlane.extproc.scheduling.fifo import FifoScheduler

__all__ = [
    "FairScheduler",
    "FifoScheduler",
    "QueueFull",
    "QueuedRequest",
    "Scheduler",
    "make_scheduler",
]


def make_scheduler(kind: str, *, max_queue_per_tenant: int, max_queue_total: int) -> Scheduler:
    """The scheduler named by an engine's ``scheduler`` setting: "fifo" or "fair"."""
    if kind == "fifo":
        return FifoScheduler(max_queue_per_tenant, max_queue_total)
    if kind == "fair":
        return FairScheduler(max_queue_per_tenant, max_queue_total)
    raise ValueError(f"unknown scheduler {kind!r}: expected 'fifo' or 'fair'")
