"""The contract every queueing policy implements.

A scheduler is pure, synchronous code: it orders waiting requests and keeps whatever
per-tenant accounting its policy needs. It never sleeps, never does I/O and never looks
at the clock itself; the caller passes ``now`` where time matters. The async admission
controller (``fairlane.extproc.admission``) owns slots, futures and timeouts and calls a
scheduler through this protocol only, so policies can be swapped per engine.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Protocol

_sequence = itertools.count()


class QueueFull(Exception):
    """The tenant's queue (or the engine's whole queue) is at its bound."""

    def __init__(self, tenant: str, limit: int) -> None:
        super().__init__(f"queue for tenant {tenant!r} is full ({limit} waiting)")
        self.tenant = tenant
        self.limit = limit


@dataclass(eq=False)
class QueuedRequest:
    """One request waiting for (or holding) an engine slot.

    ``cost`` is the weighted token estimate charged at admission (prompt tokens times the
    input weight plus ``max_tokens`` times the output weight); the real usage corrects it
    when the response ends. ``priority`` is the rank of the tenant's priority class:
    lower is served first. ``slots``: the engine slots it holds, one per sequence it
    generates (``n``). ``light``: set at admission, whether its tenant's demand was
    under its share then; ``alone``: whether no other was active in the pool (so light,
    its share being the whole pool); ``rank``: the slots its tenant (its client, for a
    shared tenant) held then per unit of its weight. ``client``: the id it was sent with
    when its tenant is shared by several (the ``unknown`` tenant), so that they take
    turns; ``""`` for a tenant of its own. Identity equality: each object is one request.
    """

    tenant: str
    cost: float
    weight: float = 1.0
    priority: int = 0
    slots: int = 1
    light: bool = True
    alone: bool = False
    rank: float = 0.0
    enqueued_at: float = 0.0
    admitted_at: float = 0.0  # when it took its slot (the pool's clock)
    client: str = ""
    seq: int = field(default_factory=lambda: next(_sequence))


class Scheduler(Protocol):
    """Orders waiting requests of one engine pool."""

    # The queue's bounds (the policy's engines.<name>.queue), changed by a reload.
    max_queue_per_tenant: int
    max_queue_total: int

    def push(self, request: QueuedRequest, now: float) -> None:
        """Queue a request; raises ``QueueFull`` when its tenant's bound is reached."""

    def pop(self, now: float) -> QueuedRequest | None:
        """Remove and return the request to admit next, charging it; None when empty."""

    def peek(self) -> QueuedRequest | None:
        """The request ``pop`` would return next, left queued and uncharged; None when
        empty. The admission controller looks before it decides whether that request
        may take a reserved slot."""

    def goes_first(self, request: QueuedRequest) -> bool:
        """Would ``request`` be served before every request waiting now? The admission
        controller lets only such a request into the slots it reserves (headroom), so a
        tenant the policy ranks behind others (served more, here or on another gateway)
        cannot use them."""

    def remove(self, request: QueuedRequest) -> bool:
        """Drop a queued request (timeout, client gone); False if it was not queued."""

    def admit_direct(self, request: QueuedRequest, now: float) -> None:
        """Charge a request admitted without queueing (a free slot and an empty queue)."""

    def complete(self, request: QueuedRequest, actual_cost: float, now: float) -> None:
        """The request ended; correct its charge from the estimate to ``actual_cost``."""

    def charge_external(self, tenant: str, amount: float, now: float) -> None:
        """Account service ``tenant`` got outside this scheduler (another gateway).

        ``amount`` is weighted tokens already divided by the tenant's weight, and may be
        negative (a correction of an estimate charged elsewhere). Policies with per-tenant
        counters add it to a tracked tenant's counter; untracked tenants are ignored.
        """

    def depth(self, tenant: str) -> int:
        """Requests of ``tenant`` waiting now."""

    def depths(self) -> dict[str, int]:
        """Waiting requests per tenant with at least one waiting."""

    def __len__(self) -> int:
        """Requests waiting in total."""
