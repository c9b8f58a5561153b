"""Weighted fair queueing between tenants: the Virtual Token Counter (VTC).

After Sheng et al., "Fairness in Serving Large Language Models", OSDI 2024. Each tenant
has a counter of the weighted tokens it was served divided by its weight. The engine
serves the backlogged tenant with the smallest counter, so continuously backlogged tenants
stay within one request's cost (over the weight) of each other; the counter is charged
the estimate at admission and corrected to real usage when the response ends.

Priority classes are strict: the lowest ``priority`` number with backlog is served first,
and fairness holds within a class. Per decision the cost is O(log backlogged tenants): one
heap per class keyed by counter, with lazy invalidation (a tenant's newest entry carries
its current ``key``; older entries are skipped when they surface). Within a tenant,
arrival order; within the tenant that unnamed clients share, turns between them
(``rotation.py``). Each tenant's state, and forgetting it once idle: ``tenants.py``.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from fairlane.extproc.scheduling.base import QueuedRequest, QueueFull
from fairlane.extproc.scheduling.tenants import TenantState, TenantTable

# Rebuild a class heap once it holds this many more stale entries than live ones.
_HEAP_SLACK = 64

# (counter, served_at, key, tenant): equal counters go to the least recently served.
_Entry = tuple[float, int, int, str]


@dataclass(eq=False, slots=True)
class _Class:
    heap: list[_Entry] = field(default_factory=list)
    backlogged: int = 0
    floor: float = 0.0  # counter of the tenant that last left this class's queue


class FairScheduler:
    """Work-conserving weighted fair queueing with strict priority classes.

    Each request is charged with its own ``weight`` and a tenant's class is that of its
    newest request, so policy changes apply from the next request on. A tenant with
    nothing queued and nothing in flight is forgotten ``idle_ttl_s`` after it went idle.
    """

    def __init__(
        self, max_queue_per_tenant: int, max_queue_total: int, idle_ttl_s: float = 600.0
    ) -> None:
        self.max_queue_per_tenant = max_queue_per_tenant
        self.max_queue_total = max_queue_total
        self.idle_ttl_s = idle_ttl_s
        self._tenants = TenantTable()
        self._backlogged: set[str] = set()
        self._classes: dict[int, _Class] = {}
        self._tickets = itertools.count()
        self._queued = 0
        self._now = float("-inf")  # latest time seen: remove() is given none

    # -- the Scheduler protocol ------------------------------------------------------

    def push(self, request: QueuedRequest, now: float) -> None:
        self._tick(now)
        if self._queued >= self.max_queue_total:
            raise QueueFull(request.tenant, self.max_queue_total)
        state = self._tenants.get(request.tenant)
        if state is not None and not state.queue.has_room_for(
            request.client, self.max_queue_per_tenant
        ):
            # What the sender holds: all of a named tenant's queue (its one client, "").
            raise QueueFull(request.tenant, state.queue.depth(request.client))
        tenant = self._tenants.busy(request.tenant)
        tenant.queue.append(request)
        self._queued += 1
        if len(tenant.queue) == 1:
            self._join(request.tenant, tenant, request.priority)
        elif request.priority != tenant.priority:
            self._move(request.tenant, tenant, request.priority)

    def peek(self) -> QueuedRequest | None:
        cls = self._first_class()
        if cls is None:
            return None
        return self._tenants[self._head(cls)[3]].queue.peek()

    def goes_first(self, request: QueuedRequest) -> bool:
        """Its class outranks every class with backlog, or it is that class and its
        tenant's counter is no larger than the head's (a tenant without state would be
        lifted to the head's: a tie)."""
        top = self._top_priority()
        if top is None:
            return True
        if request.priority != top:
            return request.priority < top
        state = self._tenants.get(request.tenant)
        return state is None or state.counter <= self._head(self._classes[top])[0]

    def pop(self, now: float) -> QueuedRequest | None:
        self._tick(now)
        cls = self._first_class()
        if cls is None:
            return None
        name = self._head(cls)[3]
        heapq.heappop(cls.heap)
        tenant = self._tenants[name]
        request = tenant.queue.popleft()
        assert request is not None  # a backlogged tenant has a live request
        self._queued -= 1
        tenant.charge(request, next(self._tickets))
        if tenant.queue:
            self._rekey(name, tenant, cls)
        else:
            self._depart(name, tenant)
        return request

    def remove(self, request: QueuedRequest) -> bool:
        tenant = self._tenants.get(request.tenant)
        if tenant is None or not tenant.queue.discard(request):
            return False
        self._queued -= 1
        if not tenant.queue:
            self._depart(request.tenant, tenant)
            self._tenants.maybe_idle(request.tenant, tenant, self._now)
        return True

    def admit_direct(self, request: QueuedRequest, now: float) -> None:
        self._tick(now)
        name = request.tenant
        tenant = self._tenants.busy(name)
        if tenant.queue:  # the caller only does this with an empty queue; stay consistent
            if request.priority != tenant.priority:
                self._move(name, tenant, request.priority)
            tenant.charge(request, next(self._tickets))
            self._rekey(name, tenant, self._classes[tenant.priority])
            return
        # Joins the class's queue and leaves it at once: lift, charge, then it is the
        # tenant that last left.
        tenant.priority = request.priority
        cls = self._class(request.priority)
        self._lift(tenant, cls)
        tenant.charge(request, next(self._tickets))
        cls.floor = tenant.counter - tenant.pending

    def complete(self, request: QueuedRequest, actual_cost: float, now: float) -> None:
        self._tick(now)
        tenant = self._tenants.get(request.tenant)
        if tenant is None or request not in tenant.inflight:
            return  # not admitted, or already completed
        tenant.inflight.remove(request)
        correction = (actual_cost - request.cost) / request.weight
        tenant.counter += correction
        tenant.pending = max(0.0, tenant.pending - request.cost / request.weight)
        if not tenant.queue:
            self._tenants.maybe_idle(request.tenant, tenant, self._now)
        elif correction:
            self._rekey(request.tenant, tenant, self._classes[tenant.priority])

    def charge_external(self, tenant: str, amount: float, now: float) -> None:
        """Add service the tenant got elsewhere (another gateway) to its counter.

        ``amount`` is already divided by the weight and may be negative (another
        gateway corrected its estimate down). Only a tracked tenant is charged: an
        untracked one gets the lift rule when it arrives, which already stops it from
        banking credit. A backlogged tenant's heap entry is rekeyed, as in ``complete``.
        """
        self._tick(now)
        state = self._tenants.get(tenant)
        if state is None or not amount:
            return
        state.counter += amount
        if state.queue:
            self._rekey(tenant, state, self._classes[state.priority])

    def depth(self, tenant: str) -> int:
        state = self._tenants.get(tenant)
        return 0 if state is None else len(state.queue)

    def depths(self) -> dict[str, int]:
        return {name: len(self._tenants[name].queue) for name in self._backlogged}

    def __len__(self) -> int:
        return self._queued

    # -- introspection -----------------------------------------------------------------

    def tracked_tenants(self) -> int:
        """Tenants the scheduler holds state for: backlogged, in flight, or not yet expired."""
        return len(self._tenants)

    def counter(self, tenant: str) -> float | None:
        """The tenant's virtual token counter, None when it holds no state."""
        state = self._tenants.get(tenant)
        return None if state is None else state.counter

    # -- internals ---------------------------------------------------------------------

    def _tick(self, now: float) -> None:
        """Advance the clock and expire a few tenants idle for longer than the TTL."""
        self._now = max(self._now, now)
        self._tenants.expire(self._now, self.idle_ttl_s)

    def _class(self, priority: int) -> _Class:
        cls = self._classes.get(priority)
        if cls is None:
            cls = self._classes[priority] = _Class()
        return cls

    def _lift(self, tenant: TenantState, cls: _Class) -> None:
        """VTC's rule for a tenant that becomes backlogged: no credit banked by idling.

        Algorithm 2 of the paper: when client u arrives and is not in the queue Q,
        c_u <- max(c_u, min of the counters in Q), or, if Q is empty, max(c_u, c_l) for
        the client l that last left Q. Here Q is the tenant's priority class.

        The paper charges output tokens as they are generated; Fairlane charges an
        estimate at admission and corrects it at the end. Lifting to a counter that
        still holds in-flight estimates (usually high: max_tokens rarely all used) would
        put the newcomer behind the flooder once those correct downwards, so the
        reference is the settled part of the counter.
        """
        if cls.backlogged:
            _, _, _, name = self._head(cls)
            head = self._tenants[name]
            reference = head.counter - head.pending
        else:
            reference = cls.floor
        tenant.counter = max(tenant.counter, reference)

    def _join(self, name: str, tenant: TenantState, priority: int) -> None:
        tenant.priority = priority
        cls = self._class(priority)
        self._lift(tenant, cls)
        cls.backlogged += 1
        self._backlogged.add(name)
        self._rekey(name, tenant, cls)

    def _move(self, name: str, tenant: TenantState, priority: int) -> None:
        """A backlogged tenant's newest request names another class: it moves there."""
        self._classes[tenant.priority].backlogged -= 1  # its entry there turns stale
        self._join(name, tenant, priority)

    def _depart(self, name: str, tenant: TenantState) -> None:
        """The tenant's queue emptied: it leaves its class and becomes the class's floor."""
        cls = self._classes[tenant.priority]
        cls.backlogged -= 1
        cls.floor = tenant.counter - tenant.pending
        if not cls.backlogged:
            cls.heap.clear()  # every entry left is stale
        tenant.key = -1
        self._backlogged.discard(name)

    def _rekey(self, name: str, tenant: TenantState, cls: _Class) -> None:
        """Give a backlogged tenant a fresh heap entry; its older ones become stale."""
        tenant.key = next(self._tickets)
        heapq.heappush(cls.heap, (tenant.counter, tenant.served_at, tenant.key, name))
        if len(cls.heap) > 2 * cls.backlogged + _HEAP_SLACK:
            # Amortised O(1): at least backlogged + slack stale pushes paid for this.
            cls.heap[:] = [e for e in cls.heap if self._live(e)]
            heapq.heapify(cls.heap)

    def _live(self, entry: _Entry) -> bool:
        tenant = self._tenants.get(entry[3])
        return tenant is not None and tenant.key == entry[2]

    def _top_priority(self) -> int | None:
        """The lowest priority number with backlog: the class served next."""
        backlogged = [p for p, c in self._classes.items() if c.backlogged]  # a few classes
        return min(backlogged) if backlogged else None

    def _first_class(self) -> _Class | None:
        top = self._top_priority()
        return None if top is None else self._classes[top]

    def _head(self, cls: _Class) -> _Entry:
        """The live entry with the smallest counter of a class with backlog."""
        while not self._live(cls.heap[0]):
            heapq.heappop(cls.heap)
        return cls.heap[0]
