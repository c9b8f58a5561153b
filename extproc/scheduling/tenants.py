"""The fair scheduler's per-tenant state, and forgetting tenants that went idle.

A tenant with nothing queued and nothing in flight is idle; its state is dropped a TTL
later, a few tenants per call, so the table follows the tenants active now instead of
every id ever seen.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from fairlane.extproc.scheduling.base import QueuedRequest
from fairlane.extproc.scheduling.rotation import ClientTurns

# Idle tenants expired per call: more than the at most one a call makes idle, so the
# sweep keeps up while no single call does unbounded work.
_SWEEP_PER_CALL = 16


@dataclass(eq=False, slots=True)
class TenantState:
    counter: float = 0.0
    pending: float = 0.0  # the part of counter that is in-flight estimates, not yet settled
    priority: int = 0
    served_at: int = -1  # ticket of its latest admission; -1: never served
    key: int = -1  # ticket of its live heap entry; -1: not backlogged
    queue: ClientTurns = field(default_factory=ClientTurns)
    inflight: set[QueuedRequest] = field(default_factory=set)

    def charge(self, request: QueuedRequest, ticket: int) -> None:
        self.counter += request.cost / request.weight
        self.pending += request.cost / request.weight
        self.served_at = ticket
        self.inflight.add(request)


class TenantTable:
    """Tenant name -> state, with the idle ones in the order they went idle."""

    def __init__(self) -> None:
        self._states: dict[str, TenantState] = {}
        self._idle: OrderedDict[str, float] = OrderedDict()  # tenant -> idle since

    def __len__(self) -> int:
        return len(self._states)

    def __getitem__(self, name: str) -> TenantState:
        return self._states[name]

    def get(self, name: str) -> TenantState | None:
        return self._states.get(name)

    def busy(self, name: str) -> TenantState:
        """The tenant's state, created if needed, and no longer a candidate for expiry."""
        self._idle.pop(name, None)
        tenant = self._states.get(name)
        if tenant is None:
            tenant = self._states[name] = TenantState()
        return tenant

    def maybe_idle(self, name: str, tenant: TenantState, now: float) -> None:
        if not tenant.queue and not tenant.inflight:
            self._idle[name] = now
            self._idle.move_to_end(name)

    def expire(self, now: float, ttl_s: float) -> None:
        """Forget a few tenants idle for longer than ``ttl_s``.

        Expiry is safe because of the lift rule: a returning tenant's counter becomes
        max(own, the class's minimum or floor), and a fresh tenant starts at 0, so all
        that dropping the state can forgive is how far the tenant was ahead of its class
        when it left (about one request's charge, as it was served at the minimum) plus
        later upward corrections. Credit is never created. Class floors are kept.
        """
        for _ in range(_SWEEP_PER_CALL):
            oldest = next(iter(self._idle.items()), None)
            if oldest is None or oldest[1] + ttl_s > now:
                return
            del self._idle[oldest[0]]
            del self._states[oldest[0]]
