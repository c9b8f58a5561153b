"""Engine slots: who is in an engine now, who waits, and for how long.

One ``EnginePool`` per model group: the engines (replicas) that serve the same models.
The pool owns each replica's in-flight count against its capacity and the futures of
waiting requests, and sends each admitted request to the replica with the most free
slots; which waiting request goes next is the scheduler's business
(``fairlane.extproc.scheduling``), so queueing policies plug in unchanged. One fair
queue feeds all replicas, so N replicas are one fair pool, not N unfair ones.

**Headroom.** Ordering alone cannot help a light tenant when a flooder holds every slot:
its request, though first in line, waits for the next one to finish (seconds, when
answers are long). So the last ``headroom`` fraction of the slots is kept for tenants
holding fewer slots than their weighted share of the pool (capacity x weight / weight of
the tenants now in flight or waiting): a tenant over its share fills the pool only up to
``capacity - reserved``, and a tenant under it is admitted into the rest at once, even
while the over-share tenant waits. Alone, any tenant's share is the whole pool, so
nothing is held back from a single flooder; the price is up to ``reserved`` idle slots
while an over-share tenant waits and a light one is active but needs fewer. A tenant that
arrives while a lone flooder holds every slot would wait for its next completion (one
answer's length when the flood's answers end in waves), so light requests may also go
over the limit, by at most ``reserved`` slots in all, while the pool is full: the flooder,
now over its share, is not refilled until the pool is back under ``capacity - reserved``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from fairlane.extproc.pool_pacing import PoolPacing
from fairlane.extproc.replicas import (
    EngineState,
    EngineUnavailable,
    QueueTimeout,
    Replica,
    reserved_slots,
)
from fairlane.extproc.scheduling import QueuedRequest, Scheduler
from fairlane.extproc.shares import Shares


class EnginePool:
    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        replicas: dict[str, int],
        clock: Callable[[], float] = time.monotonic,
        headroom: float = 0.0,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.scheduler_kind = ""
        self.replicas = {r: Replica(r, max(1, cap)) for r, cap in replicas.items()}
        self.requests = 0  # routed here so far: the supervisor's eviction value
        self.last_request = 0.0  # wall-clock time of the latest
        self._clock = clock
        self.headroom = headroom  # fraction of capacity kept for under-share tenants
        self.headroom_admissions = 0  # admitted into the reserved slots so far
        self._waiting: dict[QueuedRequest, asyncio.Future[str]] = {}
        self.shares = Shares(clock)  # linger_s: set from the policy (pools.py)
        self.pacing = PoolPacing(clock, self._dispatch)  # its pacer: set from the policy

    # -- state ----------------------------------------------------------------------

    @property
    def state(self) -> EngineState:
        states = {r.state for r in self.replicas.values()}
        if EngineState.UP in states:
            return EngineState.UP
        if states & {EngineState.STARTING, EngineState.IDLE, EngineState.QUARANTINED}:
            return EngineState.STARTING  # coming back, or loaded on demand: requests wait
        return EngineState.DOWN

    @property
    def inflight(self) -> int:
        return sum(r.inflight for r in self.replicas.values())

    @property
    def _busy(self) -> int:
        """Slots held on healthy replicas: what ``capacity`` is compared with."""
        return sum(r.inflight for r in self.replicas.values() if r.state is EngineState.UP)

    @property
    def capacity(self) -> int:
        return sum(r.capacity for r in self.replicas.values() if r.state is EngineState.UP)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active_tenants(self) -> int:
        """Tenants with a request in flight or waiting."""
        return len(self.shares)

    @property
    def reserved(self) -> int:
        """Slots only tenants under their share may take (never all of them)."""
        return reserved_slots(self.capacity, self.headroom)

    def set_capacity(self, replica: str, capacity: int) -> None:
        self.replicas[replica].capacity = max(1, capacity)
        self._dispatch()

    def set_state(self, replica: str, state: EngineState) -> None:
        self.replicas[replica].state = state
        if self.state is EngineState.DOWN:
            # No replica left or coming: waiting requests get a prompt 503 instead of
            # sitting out their timeout.
            for request, future in list(self._waiting.items()):
                self.scheduler.remove(request)
                self._unhold(request, waiting=1)
                if not future.done():
                    future.set_exception(EngineUnavailable(self.name))
            self._waiting.clear()
        self._dispatch()

    # -- admission --------------------------------------------------------------------

    def least_busy(self) -> str:
        """The healthy replica with the fewest requests in flight, for a request that
        holds no slot. Raises EngineUnavailable when none is up."""
        up = [r for r in self.replicas.values() if r.state is EngineState.UP]
        if not up:
            raise EngineUnavailable(self.name)
        return min(up, key=lambda r: r.inflight).name

    def try_admit(self, request: QueuedRequest) -> str | None:
        """A replica at once if one has a free slot and nobody waits; else None.

        Raises EngineUnavailable when every replica is down.
        """
        if self.state is EngineState.DOWN:
            raise EngineUnavailable(self.name)
        replica = self._slot(request)
        if replica is None:
            return None
        self._classify(request)
        if self.pacing.holds_back(request, self._clock()):
            return None  # queued; the pacing timer dispatches it
        if self._waiting or self._only_reserved_left():
            # Others wait, or only reserved slots (or slots over the limit) are left: both
            # are for a tenant under its share, with nothing of its own queued (its order
            # holds).
            queued_own = self.shares.waiting(request.tenant, request.client)
            if queued_own or not self._may_take_reserved(request):
                return None
            self.headroom_admissions += 1
        self.scheduler.admit_direct(request, self._clock())
        self.pacing.admitted(request)
        self._take(replica, request)
        return replica.name

    def enqueue(self, request: QueuedRequest) -> asyncio.Future[str]:
        """Queue a request that could not be admitted at once; raises QueueFull."""
        now = self._clock()
        request.enqueued_at = now
        self.scheduler.push(request, now)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        self._hold(request, waiting=1)
        return future

    async def wait(
        self, request: QueuedRequest, future: asyncio.Future[str], timeout_s: float
    ) -> str:
        """The replica once the queued request holds a slot there (the caller must
        ``release`` it). Raises QueueTimeout, EngineUnavailable, or CancelledError
        (client gone); in every raising case no slot is held."""
        try:
            async with asyncio.timeout(timeout_s):
                return await future
        except TimeoutError:
            if not _admitted(future):
                self._abandon(request)
                raise QueueTimeout(self.name) from None
            return future.result()  # admitted in the same tick the timer fired
        except asyncio.CancelledError:
            self.withdraw(request, future)
            raise

    def withdraw(self, request: QueuedRequest, future: asyncio.Future[str]) -> None:
        """The client of a queued request left: out of the queue, or, if dispatch has
        given it a slot meanwhile, that slot back."""
        if _admitted(future):
            self.release(request, future.result(), 0.0)
        else:
            self._abandon(request)

    def release(self, request: QueuedRequest, replica: str, actual_cost: float) -> None:
        """The request's response ended (or it never reached the engine)."""
        slot = self.replicas.get(replica)
        if slot is not None:
            slot.inflight = max(0, slot.inflight - request.slots)
        self._unhold(request, inflight=request.slots)
        now = self._clock()
        self.scheduler.complete(request, actual_cost, now)
        self.pacing.released(request, now, self.capacity - self.reserved)
        self._dispatch()

    def _take(self, replica: Replica, request: QueuedRequest) -> None:
        """Hold one slot per sequence the request generates (``n``), at most the replica's
        capacity. A request wider than the free slots overfills the replica rather than
        wait for it to drain (no head-of-line blocking); nothing else is admitted there
        until it is back under its capacity."""
        request.slots = max(1, min(request.slots, replica.capacity))
        request.admitted_at = self._clock()
        replica.inflight += request.slots
        self._hold(request, inflight=request.slots)

    def _slot(self, request: QueuedRequest) -> Replica | None:
        """The replica with the most free slots; with none free, while the pool is less
        than ``reserved`` over its limit and the request's tenant is not the one holding
        them all, the healthy replica least over it (callers admit only a tenant that
        may take the reserve there, as for ``_only_reserved_left``)."""
        best = max(self.replicas.values(), key=lambda r: r.free)
        if best.free > 0:
            return best
        if self._busy >= self.capacity + self.reserved:
            return None
        if self.shares.alone(request.tenant, request.client):
            return None
        up = [r for r in self.replicas.values() if r.state is EngineState.UP]
        return max(up, key=lambda r: r.free) if up else None

    def _abandon(self, request: QueuedRequest) -> None:
        """Take a request that gave up out of the queue (if dispatch has not already)."""
        if self._waiting.pop(request, None) is not None:
            self.scheduler.remove(request)
            self._unhold(request, waiting=1)

    def _dispatch(self) -> None:
        now = self._clock()
        while self._waiting:
            head = self.scheduler.peek()
            if head is None:
                return
            replica = self._slot(head)
            if replica is None:
                return
            reserved = self._only_reserved_left()
            if reserved and not self._may_take_reserved(head):
                return  # the reserved slots are not for the tenant next in line
            self._classify(head)
            if self.pacing.holds_back(head, now):
                return
            if reserved:
                self.headroom_admissions += 1
            request = self.scheduler.pop(now)
            if request is None:
                return
            future = self._waiting.pop(request, None)
            self._unhold(request, waiting=1)
            if future is None or future.done():
                # Its waiter gave up this very tick: undo the charge pop() made.
                self.scheduler.complete(request, 0.0, now)
                continue
            self.pacing.admitted(request)
            self._take(replica, request)
            future.set_result(replica.name)

    # -- shares -------------------------------------------------------------------------

    def _may_take_reserved(self, request: QueuedRequest) -> bool:
        """Under its weighted share of the slots, this request's width too, and first in
        the scheduler's order: a tenant holding few slots here but served a lot (on
        other gateways, with shared counters) ranks behind the others."""
        under = self.shares.under(request.tenant, self.capacity, request.client)
        return under and self._fits(request) and self.scheduler.goes_first(request)

    def _only_reserved_left(self) -> bool:
        return self._busy >= self.capacity - self.reserved

    def _fits(self, request: QueuedRequest) -> bool:
        tenant, weight, client = request.tenant, request.weight, request.client
        return self.shares.fits(tenant, weight, self.capacity, request.slots, client)

    def _classify(self, request: QueuedRequest) -> None:
        """Is the request's tenant light: its slots held and other requests waiting,
        and the request's width, under its weighted share? Light tenants are never
        paced, and the engine serves them first (``outcomes.engine_priority``), except
        a tenant alone in the pool: its prompts must not go before those of a tenant
        that arrives next. And its rank there: the slots its tenant holds per weight."""
        besides = 1 if request in self._waiting else 0
        tenant, client = request.tenant, request.client
        light = self.shares.light(tenant, self.capacity, besides, client)
        request.light = light and self._fits(request)
        request.alone = self.shares.alone(tenant, client)
        request.rank = self.shares.rank(tenant, client)

    def _hold(self, request: QueuedRequest, inflight: int = 0, waiting: int = 0) -> None:
        self.shares.hold(request.tenant, request.weight, inflight, waiting, request.client)

    def _unhold(self, request: QueuedRequest, inflight: int = 0, waiting: int = 0) -> None:
        self.shares.unhold(request.tenant, inflight, waiting, request.client)


def _admitted(future: asyncio.Future[str]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
