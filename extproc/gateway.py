"""The decision service: pipeline, limits, engine pools and leases, behind two calls.

``begin`` decides synchronously when it can (admit into a free slot, or refuse) and
returns a ``Pending`` only when the request must wait in a queue (or a
``SharedLimitCheck`` when a limited tenant's buckets live in Redis). ``finish`` is called
from Envoy's end-of-request record and gives the slot back with the real usage
(``withdraw`` where the decision never reached Envoy). The gRPC servicers translate
protobuf to these calls and nothing else.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from collections.abc import Callable

from fairlane.extproc.accounting import Usage, usage_cost
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.departed import Departed
from fairlane.extproc.engine_health import EngineHealth
from fairlane.extproc.errors import Reason, Rejection, engine_down
from fairlane.extproc.limits import RateLimiter, Verdict
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.outcomes import (
    Admitted,
    Lease,
    Pending,
    SharedLimitCheck,
    engine_priority,
)
from fairlane.extproc.pipeline import Ticket, evaluate, labelled
from fairlane.extproc.pools import sync_pools
from fairlane.extproc.replicas import EngineUnavailable
from fairlane.extproc.request import RequestInfo
from fairlane.extproc.runtime import UNKNOWN_TENANT, Runtime
from fairlane.extproc.scheduling import QueuedRequest, QueueFull
from fairlane.extproc.shared import SharedStateUnavailable
from fairlane.extproc.shared.counter_sync import CounterSync
from fairlane.extproc.shared.redis_limits import RedisRateLimiter


class Gateway:
    def __init__(
        self,
        runtime: Runtime,
        metrics: Metrics,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.pools: dict[str, EnginePool] = {}
        self.limiter = RateLimiter()
        self.leases: dict[str, Lease] = {}
        self.departed = Departed(clock)
        self.health = EngineHealth(self.pool_of, metrics)
        # state: redis — set by the worker; None keeps everything in this process.
        self.shared_limiter: RedisRateLimiter | None = None
        self.counter_sync: CounterSync | None = None
        self.shared_corrections_lost = 0
        self._background: set[asyncio.Task[None]] = set()
        self._clock = clock
        self._wall = wall_clock
        self._prefix = secrets.token_hex(4)  # leases of an earlier worker never match
        self._ids = itertools.count(1)
        self.runtime = runtime
        self.apply(runtime)

    # -- policy -------------------------------------------------------------------

    def apply(self, runtime: Runtime) -> None:
        """Swap in a new policy: new limits and weights apply to the next decision."""
        self.runtime = runtime
        sync_pools(self.pools, runtime, self.health.states, self._clock)
        self.metrics.config_generation.set(runtime.generation)

    def pool_of(self, engine: str) -> EnginePool | None:
        return next((p for p in self.pools.values() if engine in p.replicas), None)

    def demand(self) -> dict[str, dict[str, float]]:
        """Per engine: requests so far, the latest, and work in flight or queued."""
        out = {}
        for pool in self.pools.values():
            for name, replica in pool.replicas.items():
                out[name] = {
                    "requests": pool.requests,
                    "last": pool.last_request,
                    "inflight": replica.inflight,
                    "queued": pool.queued,
                }
        return out

    # -- decisions ------------------------------------------------------------------

    def begin(self, info: RequestInfo) -> Admitted | Rejection | Pending | SharedLimitCheck:
        runtime = self.runtime
        verdict = evaluate(info, runtime)
        if isinstance(verdict, Rejection):
            self.count_rejection(verdict)
            return verdict
        ticket = verdict
        limits = ticket.tenant.limits
        if limits is None:
            return self.after_limits(ticket, None, False)
        quota = limits.tokens_per_day
        if quota is not None and self.tokens(ticket) > quota:
            return self._beyond_quota(ticket, quota)
        if self.shared_limiter is not None:
            timeout = self.runtime.pool_config(ticket.pool).queue.timeout_s
            return SharedLimitCheck(self, ticket, self.shared_limiter, timeout)
        check = self.limiter.check(ticket.tenant.name, limits, self.tokens(ticket), self.wall())
        return self.after_limits(ticket, check, False)

    def after_limits(
        self, ticket: Ticket, check: Verdict | None, shared_limits: bool
    ) -> Admitted | Rejection | Pending:
        """Admit, queue or refuse a request that passed validation; ``check`` is the
        rate limiter's verdict (None: the tenant has no limits)."""
        if check is not None and not check.admitted:
            quota = check.reason == "quota_exceeded"
            rejection = Rejection(
                Reason.INSUFFICIENT_QUOTA if quota else Reason.RATE_LIMIT_EXCEEDED,
                f"tenant {ticket.tenant_id!r} is over its "
                f"{'daily token quota' if quota else 'rate limit'}",
                retry_after_s=check.retry_after_s,
            )
            self.count_rejection(rejection, self.label(ticket))
            return labelled(ticket.tenant, rejection)
        pool = self.pools[ticket.pool]
        if not ticket.sequences:  # the engine's tokenizer: routed, no slot, no lease
            try:
                return Admitted("", ticket, pool.least_busy())
            except EngineUnavailable:
                return self.refuse_admitted(ticket, shared_limits, engine_down(ticket.pool))
        pool.requests += 1
        pool.last_request = self.wall()
        queued = QueuedRequest(
            tenant=ticket.tenant.name,
            cost=ticket.cost,
            weight=ticket.tenant.weight,
            priority=ticket.tenant.priority,
            slots=ticket.sequences,
            # Unnamed tenants share one; by the id sent, they split its share of the
            # slots and take turns in its queue.
            client=ticket.tenant_id if ticket.tenant is self.runtime.unknown else "",
        )
        try:
            replica = pool.try_admit(queued)
            if replica is not None:
                return self.grant(ticket, queued, pool, replica, shared_limits)
            future = pool.enqueue(queued)
        except EngineUnavailable:
            return self.refuse_admitted(ticket, shared_limits, engine_down(ticket.pool))
        except QueueFull as exc:
            return self.refuse_admitted(
                ticket,
                shared_limits,
                Rejection(
                    Reason.QUEUE_FULL,
                    f"too many queued requests for tenant {ticket.tenant_id!r} ({exc.limit})",
                    retry_after_s=1.0,
                ),
            )
        timeout = self.runtime.pool_config(ticket.pool).queue.timeout_s
        return Pending(self, ticket, queued, pool, future, timeout, shared_limits)

    def grant(
        self,
        ticket: Ticket,
        queued: QueuedRequest,
        pool: EnginePool,
        replica: str,
        shared_limits: bool,
    ) -> Admitted:
        now = self._clock()
        lease_id = ticket.request_id  # Envoy's: its record names it, decision or not
        if not lease_id or lease_id in self.leases:  # none (unit tests) or not unique
            lease_id = f"{self._prefix}-{next(self._ids)}"
        self.leases[lease_id] = Lease(ticket, queued, pool, replica, now, shared_limits)
        if self.counter_sync is not None:
            self.counter_sync.record(pool.name, queued.tenant, queued.cost / queued.weight)
        waited = now - queued.enqueued_at if queued.enqueued_at else 0.0
        self.metrics.child(self.metrics.queue_wait, self.label(ticket)).observe(waited)
        admitted = Admitted(lease_id, ticket, replica, engine_priority(queued))
        if self.departed.claim(lease_id):  # its record came first: Envoy is not listening
            self.withdraw(lease_id)
        return admitted

    def _beyond_quota(self, ticket: Ticket, quota: float) -> Rejection:
        """A request estimated above the whole daily quota fits on no day: say so, with
        no Retry-After (waiting for midnight would not help)."""
        rejection = Rejection(
            Reason.INSUFFICIENT_QUOTA,
            f"this request may use {self.tokens(ticket):.0f} tokens (its prompt and "
            f"max_tokens), more than tenant {ticket.tenant_id!r}'s whole daily quota "
            f"({quota:.0f}): lower max_tokens",
        )
        self.count_rejection(rejection, self.label(ticket))
        return labelled(ticket.tenant, rejection)

    def refuse_admitted(
        self, ticket: Ticket, shared_limits: bool, rejection: Rejection
    ) -> Rejection:
        """Refuse a request that had passed validation (and the rate limiter)."""
        self.refund(ticket, shared_limits)
        self.count_rejection(rejection, self.label(ticket))
        return labelled(ticket.tenant, rejection)  # the access log names whose it was

    def refund(self, ticket: Ticket, shared_limits: bool) -> None:
        self._correct_limits(ticket, -self.tokens(ticket), shared_limits)

    def _correct_limits(self, ticket: Ticket, delta: float, shared_limits: bool) -> None:
        """Real usage minus the estimate, to the limiter that charged the estimate."""
        if ticket.tenant.limits is None:
            return
        if shared_limits and self.shared_limiter is not None:
            task = asyncio.get_running_loop().create_task(
                self._correct_shared(self.shared_limiter, ticket.tenant.name, delta)
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        else:
            self.limiter.correct(ticket.tenant.name, delta, self.wall())

    async def _correct_shared(self, limiter: RedisRateLimiter, tenant: str, delta: float) -> None:
        try:
            await limiter.correct(tenant, delta, self.wall())
        except SharedStateUnavailable:
            # The local buckets never charged this request: correcting them would only
            # skew them. The shared bucket keeps the estimate (never an under-charge
            # when estimates are high, which they are: max_tokens).
            self.shared_corrections_lost += 1

    def finish(
        self,
        lease_id: str,
        status: int,
        usage: Usage,
        ttft_s: float | None,
        engine_failed: bool = False,
        client_left: bool = False,
    ) -> None:
        """Envoy says the request ended (completed, failed or the client went away:
        ``client_left`` when it did so mid-answer, after the status was sent)."""
        lease = self.leases.pop(lease_id, None)
        if lease is None:
            return
        if engine_failed:
            self.health.quarantine(lease.pool, lease.replica)
        ticket = lease.ticket
        cost = self.runtime.policy.cost
        failed = status >= 400
        prompt, completion = usage.resolve(ticket.prompt_tokens, ticket.completion_budget, failed)
        actual = usage_cost(cost, prompt, completion)
        lease.pool.release(lease.queued, lease.replica, actual)
        if self.counter_sync is not None:
            queued = lease.queued
            self.counter_sync.record(
                lease.pool.name, queued.tenant, (actual - queued.cost) / queued.weight
            )
        self._correct_limits(ticket, prompt + completion - self.tokens(ticket), lease.shared_limits)
        label = self.label(ticket)
        m = self.metrics
        m.child(m.tokens, label, ticket.model, "prompt").inc(prompt)
        m.child(m.tokens, label, ticket.model, "completion").inc(completion)
        self.count_request(label, ticket.model, 0 if client_left else status)
        if ttft_s is not None and ticket.first_byte_is_token and status == 200:
            m.child(m.ttft, label, ticket.model).observe(ttft_s)

    def withdraw(self, request_id: str) -> None:
        """The client left before any answer, and Envoy's record names no slot: a slot
        granted to it was never used (the decision came too late). Nothing is charged."""
        if request_id in self.leases:
            self.finish(request_id, 0, Usage(prompt_tokens=0, completion_tokens=0), None)
            self.metrics.leases_withdrawn.inc()
        elif request_id:  # none yet; one may still be granted
            self.departed.add(request_id)

    def count_request(self, label: str, model: str, status: int) -> None:
        """fairlane_requests_total: how an admitted request ended (status 0: the client
        went away first, before or during the answer)."""
        outcome = "ok" if 200 <= status < 400 else ("client_closed" if status == 0 else "error")
        self.metrics.child(self.metrics.requests, label, model, outcome).inc()

    def expire_leases(self, max_age_s: float) -> int:
        """Reclaim slots whose end-of-request record never came (a lost log entry)."""
        cutoff = self._clock() - max_age_s
        # Leases are kept in admission order, so the stale ones are a prefix.
        old = itertools.takewhile(lambda i: i[1].admitted_at < cutoff, self.leases.items())
        stale = [lease_id for lease_id, _ in old]
        for lease_id in stale:
            self.finish(lease_id, 0, Usage(), None)
        if stale:
            self.metrics.leases_expired.inc(len(stale))
        return len(stale)

    # -- helpers --------------------------------------------------------------------

    def label(self, ticket: Ticket) -> str:
        return ticket.tenant.name if ticket.tenant.named else UNKNOWN_TENANT

    @staticmethod
    def tokens(ticket: Ticket) -> float:
        """The rate limiter's charge at admission: prompt estimate + completion budget."""
        return float(ticket.prompt_tokens + ticket.completion_budget)

    def wall(self) -> float:
        return self._wall()

    def count_rejection(self, rejection: Rejection, label: str | None = None) -> None:
        """Count a refusal against ``label`` (default: the rejection's tenant)."""
        tenant = label or rejection.tenant or UNKNOWN_TENANT
        self.metrics.child(self.metrics.rejected, tenant, rejection.reason.code).inc()
