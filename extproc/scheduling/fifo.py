"""First come, first served across all tenants: what the engine does on its own.

The benchmark's baseline arm. The only policy here is the queue bounds; the order is
arrival order whoever the tenant is, so a tenant that floods the queue gets the engine.
"""

from __future__ import annotations

import itertools
from collections import deque

from fairlane.extproc.scheduling.base import QueuedRequest, QueueFull

# Compact a queue once it holds this many more dead entries than live ones.
_SLACK = 32


class RemovableQueue:
    """A FIFO of requests with O(1) amortised removal of any member.

    ``discard`` only forgets the request (lazy deletion); its stale entry is skipped when
    it reaches the head, and the deque is rebuilt once dead entries outnumber live ones,
    so memory stays proportional to the live length. Each entry carries a ticket, so a
    request that is discarded and appended again is served at its new position.
    """

    def __init__(self) -> None:
        self._entries: deque[tuple[int, QueuedRequest]] = deque()
        self._live: dict[QueuedRequest, int] = {}
        self._tickets = itertools.count()

    def __len__(self) -> int:
        return len(self._live)

    def append(self, request: QueuedRequest) -> None:
        if request in self._live:
            raise ValueError(f"request {request.seq} is already queued")
        ticket = next(self._tickets)
        self._live[request] = ticket
        self._entries.append((ticket, request))

    def discard(self, request: QueuedRequest) -> bool:
        if self._live.pop(request, None) is None:
            return False
        if not self._live:
            self._entries.clear()
        elif len(self._entries) > 2 * len(self._live) + _SLACK:
            self._entries = deque(e for e in self._entries if self._live.get(e[1]) == e[0])
        return True

    def peek(self) -> QueuedRequest | None:
        """The head without removing it (drops dead entries found on the way)."""
        while self._entries:
            ticket, request = self._entries[0]
            if self._live.get(request) == ticket:
                return request
            self._entries.popleft()
        return None

    def popleft(self) -> QueuedRequest | None:
        while self._entries:
            ticket, request = self._entries.popleft()
            if self._live.get(request) == ticket:
                del self._live[request]
                return request
        return None


class FifoScheduler:
    """Arrival order across tenants, with per-tenant and total queue bounds."""

    def __init__(self, max_queue_per_tenant: int, max_queue_total: int) -> None:
        self.max_queue_per_tenant = max_queue_per_tenant
        self.max_queue_total = max_queue_total
        self._queue = RemovableQueue()
        self._depths: dict[str, int] = {}  # only tenants with something queued

    def push(self, request: QueuedRequest, now: float) -> None:
        if len(self._queue) >= self.max_queue_total:
            raise QueueFull(request.tenant, self.max_queue_total)
        depth = self._depths.get(request.tenant, 0)
        if depth >= self.max_queue_per_tenant:
            raise QueueFull(request.tenant, self.max_queue_per_tenant)
        self._queue.append(request)
        self._depths[request.tenant] = depth + 1

    def pop(self, now: float) -> QueuedRequest | None:
        request = self._queue.popleft()
        if request is not None:
            self._forget(request.tenant)
        return request

    def peek(self) -> QueuedRequest | None:
        return self._queue.peek()

    def goes_first(self, request: QueuedRequest) -> bool:
        return not self._queue  # arrival order: only when nobody waits

    def remove(self, request: QueuedRequest) -> bool:
        if not self._queue.discard(request):
            return False
        self._forget(request.tenant)
        return True

    def admit_direct(self, request: QueuedRequest, now: float) -> None:
        """FIFO keeps no accounting: nothing to charge."""

    def complete(self, request: QueuedRequest, actual_cost: float, now: float) -> None:
        """FIFO keeps no accounting: nothing to correct."""

    def charge_external(self, tenant: str, amount: float, now: float) -> None:
        """FIFO keeps no counters: service elsewhere changes nothing here."""

    def depth(self, tenant: str) -> int:
        return self._depths.get(tenant, 0)

    def depths(self) -> dict[str, int]:
        return dict(self._depths)

    def tracked_tenants(self) -> int:
        """Tenants the scheduler holds state for (those with requests queued)."""
        return len(self._depths)

    def __len__(self) -> int:
        return len(self._queue)

    def _forget(self, tenant: str) -> None:
        depth = self._depths[tenant] - 1
        if depth:
            self._depths[tenant] = depth
        else:
            del self._depths[tenant]
