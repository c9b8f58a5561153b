"""Fair-share counters synchronised between gateways through Redis, in the background.

Each gateway ``record``s the weighted cost (over the tenant's weight) it charged per
(pool, tenant). Every ``interval_s`` the ``run`` loop pushes the sums accumulated since
the last push and reads back the global totals of the tenants that changed since its
previous read, in one round trip (one Lua script per pool, pipelined). It then calls
``apply(pool, tenant, delta)`` with what OTHER gateways served the tenant since that
read: global total - this gateway's pushes - what it already applied. The gateway adds
that to its scheduler (``Scheduler.charge_external``), so a tenant that spreads its
requests over N gateways carries the same counter on each of them.

Redis layout, per pool (a single Redis or a primary with replicas, not Redis Cluster):

- ``<prefix>:vtc:<pool>``: tenant -> global total (HINCRBYFLOAT);
- ``…:born``: tenant -> ``<seq>:<id>``, set when the field is created. A changed id
  means the field was recreated (Redis restarted, or the tenant expired and came back),
  so the old total is no longer a baseline; ``seq`` tells a reader whether a field it
  has no baseline for is new since its last read (all of it is new service) or older
  (it only sets the baseline);
- ``…:chg``: tenant -> the push round (``seq``) that last changed it, so a read costs
  O(tenants changed), not O(tenants): redis-py parses replies in Python, and reading
  whole hashes measured ~10 ms per round at 200 tenants;
- ``…:at``: tenant -> wall time of its last push; ``…:meta``: the round counter and an
  epoch id (a new epoch: everything is re-read).

Fields not pushed for ``ttl_s`` are deleted by whichever gateway cleans up next (every
``ttl_s / 10``), the keys expire ``ttl_s`` after the last push, and a gateway forgets its
baselines after ``ttl_s`` without a change: memory is bounded on both sides.

Staleness: service recorded on A waits up to ``interval_s`` for A's push, then up to
``interval_s`` for B's next read; each is one round trip. So B's view of A's service is
at most 2 * interval_s + 2 RTT old (interval_s + RTT on average).

When Redis cannot be reached, sums keep accumulating per (pool, tenant) - bounded by the
tenants recorded, and entries unchanged for ``ttl_s`` are dropped - and are pushed as
soon as it answers again. The outage is logged once, ``available`` is False meanwhile,
and ``failures`` counts the failed rounds. A round that timed out after Redis ran it is
pushed again (at least once): the tenant is then counted twice for that interval.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from fairlane.extproc.shared import make_client, redacted

log = logging.getLogger(__name__)

Apply = Callable[[str, str, float], None]

# The Redis side, run atomically per pool: push this gateway's sums and read back the
# tenants changed since the last read; delete tenants not pushed for ttl_s.
_SYNC = resources.files("fairlane.extproc.shared").joinpath("vtc_sync.lua").read_text()
_CLEANUP = resources.files("fairlane.extproc.shared").joinpath("vtc_cleanup.lua").read_text()


@dataclass(slots=True)
class _Pending:
    amount: float
    changed_at: float  # monotonic


@dataclass(slots=True)
class _Seen:
    born: str
    total: float  # the global total at the last read that changed it
    changed_at: float  # monotonic


@dataclass(slots=True)
class _Pool:
    epoch: str = ""
    seq: int = 0  # the last push round read
    tenants: dict[str, _Seen] | None = None  # None: never read

    def known(self) -> dict[str, _Seen]:
        if self.tenants is None:
            self.tenants = {}
        return self.tenants


class CounterSync:
    """Pushes this gateway's per-tenant service and applies the other gateways'.

    ``record`` is synchronous and O(1): call it where the scheduler is charged (at
    admission with the estimate over the weight, at completion with the correction over
    the weight). Call ``watch`` with every pool at startup, so that the first read of a
    pool, which only sets baselines, happens before its first request. One ``run`` (or
    ``sync`` caller) at a time.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fairlane",
        interval_s: float = 0.1,
        ttl_s: float = 600.0,
        timeout_s: float = 0.5,
        retry_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.interval_s = interval_s
        self.ttl_s = ttl_s
        self.retry_interval_s = retry_interval_s
        self.available = True
        self.failures = 0  # rounds that could not reach Redis, in total
        self.syncs = 0  # rounds that did
        self.last_rtt_s = 0.0  # the latest successful round's duration
        self.redis: Redis = make_client(url, timeout_s, max_connections=2)
        self._sync = self.redis.register_script(_SYNC)
        self._cleanup = self.redis.register_script(_CLEANUP)
        self._clock = clock
        self._wall = wall_clock
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._pools: dict[str, _Pool] = {}
        self._id = secrets.token_hex(6)
        self._rounds = itertools.count()
        self._cleaned_at = -math.inf

    def record(self, pool: str, tenant: str, cost_over_weight: float) -> None:
        """This gateway charged ``tenant`` in ``pool`` (weighted tokens over its weight)."""
        entry = self._pending.get((pool, tenant))
        if entry is None:
            self._pending[(pool, tenant)] = _Pending(cost_over_weight, self._clock())
            if pool not in self._pools:
                self._pools[pool] = _Pool()
        else:
            entry.amount += cost_over_weight
            entry.changed_at = self._clock()

    def watch(self, pools: Iterable[str]) -> None:
        """Read these pools' totals from the next round on, recorded into or not."""
        for pool in pools:
            self._pools.setdefault(pool, _Pool())

    def tracked(self) -> int:
        """(pool, tenant) entries held: pending pushes and read baselines."""
        known = sum(len(p.tenants or ()) for p in self._pools.values())
        return len(self._pending) + known

    async def run(self, apply: Apply) -> None:
        """Sync every ``interval_s`` (``retry_interval_s`` while Redis is down), forever."""
        while True:
            started = self._clock()
            try:
                ok = await self.sync(apply)
            except Exception:  # a bug in apply must not stop the loop
                log.exception("counter sync: applying other gateways' service failed")
                ok = False
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # A cancel that landed inside a Redis call's own timeout can come back
                # as a (caught) timeout error: honour it here, or this loop never ends.
                raise asyncio.CancelledError
            pause = self.interval_s if ok else max(self.interval_s, self.retry_interval_s)
            await asyncio.sleep(max(0.0, pause - (self._clock() - started)))

    async def sync(self, apply: Apply) -> bool:
        """One round: push, read, apply. False when Redis could not be reached."""
        pending, self._pending = self._pending, {}
        pushed: dict[str, dict[str, float]] = {}
        for (pool, tenant), entry in pending.items():
            pushed.setdefault(pool, {})[tenant] = entry.amount
        pools = sorted(self._pools)
        started = self._clock()
        try:
            try:
                replies = await self._round(pools, pushed)
            except NoScriptError:  # Redis restarted: its script cache is empty
                await self.redis.script_load(_SYNC)
                replies = await self._round(pools, pushed)
        except (RedisError, OSError) as exc:
            self._restore(pending)
            self._failed(exc)
            return False
        self.last_rtt_s = self._clock() - started
        self.syncs += 1
        if not self.available:
            self.available = True
            log.warning(
                "shared counters at %s answer again after %d failed rounds: resynced",
                redacted(self.url),
                self.failures,
            )
        deltas: list[tuple[str, str, float]] = []
        for pool, reply in zip(pools, replies, strict=True):
            deltas += self._merge(pool, reply, pushed.get(pool, {}))
        for pool, tenant, delta in deltas:  # the baselines are already updated
            apply(pool, tenant, delta)
        await self._maybe_clean(pools)
        return True

    async def close(self) -> None:
        await self.redis.aclose()

    # -- internals ---------------------------------------------------------------------

    def _keys(self, pool: str) -> list[str]:
        base = f"{self.prefix}:vtc:{pool}"
        return [base, f"{base}:born", f"{base}:at", f"{base}:chg", f"{base}:meta"]

    async def _round(self, pools: list[str], pushed: dict[str, dict[str, float]]) -> list[Any]:
        wall = repr(self._wall())
        new_id = f"{self._id}-{next(self._rounds)}"
        ttl = str(math.ceil(self.ttl_s))
        async with self.redis.pipeline(transaction=False) as pipe:
            for pool in pools:
                state = self._pools[pool]
                args: list[str | float] = [state.epoch, str(state.seq), new_id, wall, ttl]
                for tenant, amount in pushed.get(pool, {}).items():
                    args += [tenant, repr(amount)]
                pipe.evalsha(self._sync.sha, 5, *self._keys(pool), *args)
            return list(await pipe.execute())

    def _merge(
        self, pool: str, reply: list[str], pushed: dict[str, float]
    ) -> list[tuple[str, str, float]]:
        """New baselines from one pool's reply; returns what others served since."""
        state = self._pools[pool]
        first = state.tenants is None  # history before we watched is not ours to apply
        known = state.known()
        state.epoch, state.seq, last = reply[0], int(reply[1]), int(reply[2])
        now = self._clock()
        deltas = []
        for i in range(3, len(reply), 3):
            tenant, total, born = reply[i], float(reply[i + 1]), reply[i + 2]
            before = known.get(tenant)
            known[tenant] = _Seen(born, total, now)
            if before is not None and before.born == born:
                base = before.total
            elif int(born.partition(":")[0]) > last:
                base = 0.0  # created since our last read: all of it is new service
            else:
                continue  # a field we forgot: its history only sets the baseline
            delta = total - base - pushed.get(tenant, 0.0)
            if not first and abs(delta) > 1e-9 * max(1.0, abs(total)):  # float noise
                deltas.append((pool, tenant, delta))
        return deltas

    def _restore(self, pending: dict[tuple[str, str], _Pending]) -> None:
        """Put an unpushed round back, under what was recorded meanwhile."""
        for key, entry in pending.items():
            newer = self._pending.get(key)
            if newer is None:
                self._pending[key] = entry
            else:
                newer.amount += entry.amount
        cutoff = self._clock() - self.ttl_s
        for key in [k for k, e in self._pending.items() if e.changed_at < cutoff]:
            del self._pending[key]  # its tenant is forgotten everywhere by now

    def _failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.available:
            self.available = False
            log.warning(
                "shared counters at %s unavailable (%s): fair shares are per gateway "
                "until it answers again; service is kept and pushed then",
                redacted(self.url),
                exc,
            )

    async def _maybe_clean(self, pools: list[str]) -> None:
        """Every ttl_s / 10: delete idle tenants in Redis and forget idle baselines."""
        now = self._clock()
        if now - self._cleaned_at < self.ttl_s / 10:
            return
        self._cleaned_at = now
        for state in self._pools.values():
            known = state.tenants or {}
            for tenant in [t for t, seen in known.items() if seen.changed_at < now - self.ttl_s]:
                del known[tenant]
        cutoff = repr(self._wall() - self.ttl_s)
        try:
            for pool in pools:
                await self._cleanup(keys=self._keys(pool)[:4], args=[cutoff])
        except (RedisError, OSError) as exc:
            log.debug("counter sync cleanup failed: %s", exc)  # the next round retries
            self._cleaned_at = -math.inf
