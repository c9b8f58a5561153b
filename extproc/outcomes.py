"""What a decision can turn into: an admission, or a wait (queue or shared-state check).

The gRPC servicer treats ``Pending`` and ``SharedLimitCheck`` alike: extend Envoy's
message timeout, then await ``result()``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.errors import Reason, Rejection, engine_down
from fairlane.extproc.pipeline import Ticket
from fairlane.extproc.replicas import EngineUnavailable, QueueTimeout
from fairlane.extproc.scheduling import QueuedRequest
from fairlane.extproc.shared import SharedStateUnavailable

if TYPE_CHECKING:
    from fairlane.extproc.gateway import Gateway
    from fairlane.extproc.shared.redis_limits import RedisRateLimiter


@dataclass(slots=True)
class Lease:
    """An admitted request holding a slot until Envoy reports its end."""

    ticket: Ticket
    queued: QueuedRequest
    pool: EnginePool
    replica: str
    admitted_at: float
    shared_limits: bool  # charged by the Redis limiter (so corrected there too)


@dataclass(frozen=True, slots=True)
class Admitted:
    lease_id: str
    ticket: Ticket
    replica: str  # the engine it goes to
    # For engines that schedule by priority (lower first): ``engine_priority()``.
    engine_priority: int = 0


def engine_priority(queued: QueuedRequest) -> int:
    """The priority an engine schedules the request by, lower first. Its level is the
    tenant's class rank twice, plus 1 unless the tenant was light at admission (slots
    held plus requests waiting under its share) and not alone in the pool: in the
    engine's own waiting queue a light tenant's prompt goes before a flooder's, and a
    newcomer's before those of a tenant that had the engine to itself. Under the level,
    the slots the tenant held per unit of weight (``QueuedRequest.rank``): among light
    tenants, one that just sent a burst (still under its share) does not put all of it
    ahead of a tenant that holds little. Under the other levels none, so the engine takes
    them in arrival order, the order Fairlane's queue chose: a rank that moves with a
    flooder's holdings would let its later requests pass its earlier ones for as long as
    the engine's own queue stays full, a minute and more."""
    heavy = queued.alone or not queued.light
    level = 2 * queued.priority + heavy
    rank = 0 if heavy else int(min(queued.rank, PRIORITY_LEVEL_SPAN - 1))
    return level * PRIORITY_LEVEL_SPAN + rank


class Pending:
    """A queued request: await ``result()`` for the final Admitted or Rejection."""

    def __init__(
        self,
        gateway: Gateway,
        ticket: Ticket,
        queued: QueuedRequest,
        pool: EnginePool,
        future: asyncio.Future[str],
        timeout_s: float,
        shared_limits: bool,
    ) -> None:
        self._gateway = gateway
        self._ticket = ticket
        self._queued = queued
        self._pool = pool
        self._future = future
        self.timeout_s = timeout_s
        self._shared = shared_limits

    async def result(self) -> Admitted | Rejection:
        g, ticket = self._gateway, self._ticket
        try:
            replica = await self._pool.wait(self._queued, self._future, self.timeout_s)
        except QueueTimeout:
            return g.refuse_admitted(
                ticket,
                self._shared,
                Rejection(
                    Reason.QUEUE_TIMEOUT,
                    f"engine {ticket.pool} is busy: waited {self.timeout_s:g}s in the queue",
                    retry_after_s=max(1.0, self.timeout_s / 4),
                ),
            )
        except EngineUnavailable:
            return g.refuse_admitted(ticket, self._shared, engine_down(ticket.pool))
        except asyncio.CancelledError:
            g.refund(ticket, self._shared)
            raise
        return g.grant(ticket, self._queued, self._pool, replica, self._shared)

    def withdraw(self) -> None:
        """The client left before ``result()`` was awaited: out of the queue (or the slot
        it was given back), and the estimate refunded, as ``result()`` does when its
        wait is cancelled."""
        self._pool.withdraw(self._queued, self._future)
        self._gateway.refund(self._ticket, self._shared)


class SharedLimitCheck:
    """A limited tenant's request under ``state: redis``: one round trip to Redis for the
    exact, cross-gateway bucket check, then admission as usual. Same interface as
    Pending, so the servicer awaits either alike."""

    def __init__(
        self, gateway: Gateway, ticket: Ticket, limiter: RedisRateLimiter, timeout_s: float
    ) -> None:
        self._gateway = gateway
        self._ticket = ticket
        self._limiter = limiter
        self.timeout_s = timeout_s

    async def result(self) -> Admitted | Rejection:
        g, ticket = self._gateway, self._ticket
        limits = ticket.tenant.limits
        assert limits is not None  # only limited tenants come here
        tokens, now = g.tokens(ticket), g.wall()
        shared = True
        try:
            verdict = await self._limiter.check(ticket.tenant.name, limits, tokens, now)
        except SharedStateUnavailable:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # The client left during the Redis call (its timeout swallowed the
                # cancel): nothing was charged, and nothing may be admitted.
                raise asyncio.CancelledError from None
            # Never fail open or closed on a Redis outage: this gateway's own buckets.
            shared = False
            verdict = g.limiter.check(ticket.tenant.name, limits, tokens, now)
        outcome = g.after_limits(ticket, verdict, shared)
        if isinstance(outcome, Pending | SharedLimitCheck):
            return await outcome.result()
        return outcome
