"""Fair-share counters synchronised through a real Redis: two syncs are two gateways.

Staleness within its bound, a flooder spread over two gateways, idle tenants dropped,
forgotten tenants not charged their history, and the cost of one round. A module-scoped
``redis-server`` serves every test (each uses its own key prefix); it runs in its own
process group and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import statistics
import time
from typing import Any

import pytest

from fairlane.extproc.scheduling import FairScheduler, QueuedRequest
from fairlane.extproc.shared.counter_sync import Apply, CounterSync

from testkit.redis_state import syncs

pytestmark = pytest.mark.integration


async def test_service_on_a_reaches_b_within_the_bound(redis_server: Any) -> None:
    """Measured staleness: from ``record`` on A to ``apply`` on B. The bound is
    2 * interval_s + 2 round trips (A's push waits for A's tick, B's read for B's);
    B's loop is started at several phases behind A's to hit the worst case."""
    interval = 0.1
    delays: list[float] = []
    rtts: list[float] = []
    seen: list[tuple[float, str, float]] = []

    def on_b(pool: str, tenant: str, delta: float) -> None:
        seen.append((time.perf_counter(), tenant, delta))

    for phase in (0.05, 0.5, 0.95):
        a, b = syncs(redis_server.url, interval_s=interval)
        a.watch(["p"])
        b.watch(["p"])
        tasks = [asyncio.create_task(a.run(lambda *_: None))]
        await asyncio.sleep(phase * interval)
        tasks.append(asyncio.create_task(b.run(on_b)))
        try:
            await asyncio.sleep(3 * interval)  # both have read their baselines
            for i in range(10):
                seen.clear()
                await asyncio.sleep(random.uniform(0, interval))  # any point of A's cycle
                recorded = time.perf_counter()
                a.record("p", f"t{i}", 1000.0)
                while not seen:
                    await asyncio.sleep(0.001)
                    assert time.perf_counter() - recorded < 1.0, "never applied"
                at, tenant, delta = seen[0]
                assert (tenant, delta) == (f"t{i}", 1000.0)
                delays.append(at - recorded)
            rtts += [a.last_rtt_s, b.last_rtt_s]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for sync in (a, b):
                await sync.close()
    print(
        f"\nstaleness over {len(delays)} records (interval {interval * 1e3:.0f} ms, B at "
        f"3 phases behind A): p50 {statistics.median(delays) * 1e3:.1f} ms, "
        f"max {max(delays) * 1e3:.1f} ms; sync round trip up to {max(rtts) * 1e3:.2f} ms"
    )
    # 2 intervals + 2 round trips, plus event-loop lag on a busy machine.
    assert max(delays) <= 2 * interval + 0.1


async def test_flooder_spread_over_two_gateways_gains_no_extra_share(
    redis_server: Any,
) -> None:
    """The flooder sends half its requests to each gateway; a quiet tenant uses A only.
    With the counters synchronised, the flooder's counter on each gateway is its global
    service (within what was served during the staleness bound), not half of it."""
    interval = 0.05
    sync_a, sync_b = syncs(redis_server.url, interval_s=interval)
    scheds = {"a": FairScheduler(1000, 10_000), "b": FairScheduler(1000, 10_000)}
    gateways = {"a": sync_a, "b": sync_b}
    clock = itertools.count()

    def applier(name: str) -> Apply:
        def apply(pool: str, tenant: str, delta: float) -> None:
            scheds[name].charge_external(tenant, delta, float(next(clock)))

        return apply

    for sync in gateways.values():
        sync.watch(["pool"])
        assert await sync.sync(lambda *_: None)  # baselines
    # Both gateways track the flooder from the start. A scheduler drops service applied
    # to a tenant it does not track (by design: the lift rule bounds it on arrival), so
    # otherwise A's sync could read B's first request before A ever saw the flooder, and
    # A's counter would stay one request behind for good (a CI run did exactly that).
    for sched in scheds.values():
        known = QueuedRequest("flood", 0.0, weight=2.0)
        sched.admit_direct(known, float(next(clock)))
        sched.complete(known, 0.0, float(next(clock)))
    tasks = [asyncio.create_task(s.run(applier(n))) for n, s in gateways.items()]
    served = {"flood": 0.0, "quiet": 0.0}
    history: list[tuple[float, float]] = []  # (time, flooder's global service)
    rng = random.Random(1)
    gaps = []
    try:
        for i in range(400):
            name = "a" if i % 2 else "b"
            weight = 2.0  # the flooder's weight: the counters are cost / weight
            est = 300.0
            actual = rng.uniform(50, 300)
            request = QueuedRequest("flood", est, weight=weight)
            scheds[name].admit_direct(request, float(next(clock)))
            gateways[name].record("pool", "flood", est / weight)
            scheds[name].complete(request, actual, float(next(clock)))
            gateways[name].record("pool", "flood", (actual - est) / weight)
            served["flood"] += actual / weight
            history.append((time.perf_counter(), served["flood"]))
            if i % 20 == 0:  # the quiet tenant, on A only, far below the flooder
                quiet = QueuedRequest("quiet", 1.0)
                scheds["a"].admit_direct(quiet, float(next(clock)))
                sync_a.record("pool", "quiet", 1.0)
                scheds["a"].complete(quiet, 1.0, float(next(clock)))
                served["quiet"] += 1.0
            await asyncio.sleep(0.005)
            if i % 50 == 49:
                # Mid-run: each gateway's counter trails the global service by no more
                # than what was served within the staleness bound.
                now = time.perf_counter()
                # The bound, 2 intervals + 2 round trips, with room for loop lag.
                stale = next(s for t, s in history if t >= now - 2 * interval - 0.2)
                for sched in scheds.values():
                    counter = sched.counter("flood")
                    assert counter is not None
                    assert counter >= stale - 1e-6
                    assert counter <= served["flood"] + 1e-6
                    gaps.append(served["flood"] - counter)
        # The last records reach the other gateway within a few intervals: wait for
        # them, up to a deadline.
        deadline = time.perf_counter() + 2.0
        while time.perf_counter() < deadline and any(
            sched.counter("flood") != pytest.approx(served["flood"], rel=1e-9)
            for sched in scheds.values()
        ):
            await asyncio.sleep(interval)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sync in gateways.values():
            await sync.close()
    counters = {name: sched.counter("flood") for name, sched in scheds.items()}
    print(
        f"\nflooder global service {served['flood']:.1f}; counters {counters}; "
        f"mid-run lag max {max(gaps):.1f} (one request ~{300 / 2:.0f})"
    )
    for counter in counters.values():
        assert counter == pytest.approx(served["flood"], rel=1e-9)
    # The quiet tenant was only ever on A: B does not track it, so ignored its service.
    assert scheds["b"].counter("quiet") is None


async def test_idle_tenants_are_dropped(redis_server: Any) -> None:
    now = [0.0]
    # This clock drives the cleanup cadence and the local ages (baselines, pending sums);
    # Redis' field ages follow the wall clock.
    a, b = syncs(redis_server.url, ttl_s=2.0, clock=lambda: now[0])
    try:
        for sync in (a, b):
            sync.watch(["p"])
        for i in range(100):
            a.record("p", f"t{i}", 1.0)
        assert await a.sync(lambda *_: None) and await b.sync(lambda *_: None)
        assert a.tracked() == b.tracked() == 100
        totals = f"{a.prefix}:vtc:p"
        for key in (totals, f"{totals}:born", f"{totals}:at", f"{totals}:chg"):
            assert 0 < await a.redis.ttl(key) <= 2
        await asyncio.sleep(2.2)  # wall time: the fields were last pushed 2.2 s ago
        a.record("p", "active", 1.0)
        now[0] += 2.5  # more than ttl_s without a change, and past the cleanup cadence
        assert await a.sync(lambda *_: None) and await b.sync(lambda *_: None)
        assert await a.redis.hlen(totals) == 1
        assert await a.redis.zcard(f"{totals}:chg") == 1
        assert a.tracked() == b.tracked() == 1  # only "active" is remembered
        # While Redis is unreachable, pending sums unchanged for ttl_s are dropped too.
        c = CounterSync("redis://127.0.0.1:1/0", ttl_s=2.0, timeout_s=0.05, clock=lambda: now[0])
        c.record("p", "old", 1.0)
        now[0] += 3.0
        c.record("p", "new", 1.0)
        assert not await c.sync(lambda *_: None)
        assert c.tracked() == 1
        await c.close()
    finally:
        for sync in (a, b):
            await sync.close()


async def test_a_forgotten_tenant_is_not_charged_its_history(redis_server: Any) -> None:
    """B dropped its baseline for a tenant while Redis still holds the tenant's total:
    when the tenant changes again, B applies nothing for it (only later changes), never
    the whole history as if it were new."""
    now = [0.0]
    a, b = syncs(redis_server.url, ttl_s=600.0, clock=lambda: now[0])
    got: list[tuple[str, float]] = []
    try:
        for sync in (a, b):
            sync.watch(["p"])
            assert await sync.sync(lambda *_: None)
        a.record("p", "t", 1000.0)
        assert await a.sync(lambda *_: None)
        assert await b.sync(lambda _, t, d: got.append((t, d)))
        assert got == [("t", 1000.0)]
        now[0] += 601  # b forgets the baseline (Redis keeps the field: its wall age is 0)
        assert await b.sync(lambda *_: None)
        assert b.tracked() == 0
        a.record("p", "t", 5.0)
        assert await a.sync(lambda *_: None)
        got.clear()
        assert await b.sync(lambda _, t, d: got.append((t, d)))
        assert got == []  # 1005 is history: it only sets the baseline again
        a.record("p", "t", 7.0)
        assert await a.sync(lambda *_: None)
        assert await b.sync(lambda _, t, d: got.append((t, d)))
        assert got == [("t", 7.0)]
    finally:
        for sync in (a, b):
            await sync.close()


async def test_sync_round_cost(redis_server: Any) -> None:
    """One round with 200 tenants known and 20 changed: the read is O(changed)."""
    (a,) = syncs(redis_server.url, n=1)
    try:
        a.watch(["p"])
        for i in range(200):
            a.record("p", f"t{i}", 1.0)
        assert await a.sync(lambda *_: None)
        rounds = []
        for _ in range(200):
            for i in range(20):
                a.record("p", f"t{i}", 1.0)
            started = time.perf_counter()
            assert await a.sync(lambda *_: None)
            rounds.append(time.perf_counter() - started)
        q = statistics.quantiles(rounds, n=100)
        print(
            f"\nsync round (200 tenants, 20 changed): "
            f"p50 {q[49] * 1e3:.2f} ms, p99 {q[98] * 1e3:.2f} ms"
        )
        assert q[49] < 0.01
    finally:
        await a.close()
