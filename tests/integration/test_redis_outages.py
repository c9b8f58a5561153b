"""Shared tenant state when Redis goes away: limiters fail fast and recover, counter
syncs keep their local sums and resync.

Every test starts its own ``redis-server``, so stopping or pausing it disturbs nobody;
each runs in its own process group and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from fairlane.extproc.limits import TenantLimits
from fairlane.extproc.shared import SharedStateUnavailable
from fairlane.extproc.shared.redis_limits import RedisRateLimiter

from testkit.redis_state import MIDDAY, syncs

pytestmark = pytest.mark.integration


# -- limits: Redis unavailable -----------------------------------------------------------


async def admitted_soon(
    limiter: RedisRateLimiter, limits: TenantLimits, now: float, within_s: float = 5.0
) -> None:
    """Check until one is admitted. A first call to a fresh Redis connects and loads the
    script, which on a busy 2-core host can outlast the 50 ms timeout these tests give
    the calls they measure (CI once timed out on the very first, Redis up)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            assert (await limiter.check("t", limits, 1, now)).admitted
            return
        except SharedStateUnavailable:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_redis_down_raises_fast_and_recovers(
    own_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter(own_redis.url, timeout_s=0.05, probe_interval_s=0.2)
    limits = TenantLimits(requests_per_minute=60)
    try:
        await admitted_soon(limiter, limits, MIDDAY)
        caplog.clear()
        own_redis.stop()
        caplog.set_level(logging.WARNING, "fairlane.extproc.shared")
        took = []
        for _ in range(5):
            started = time.perf_counter()
            with pytest.raises(SharedStateUnavailable):
                await limiter.check("t", limits, 1, MIDDAY)
            took.append(time.perf_counter() - started)
            with pytest.raises(SharedStateUnavailable):
                await limiter.correct("t", -1, MIDDAY)
        later = ", ".join(f"{t * 1e6:.0f} us" for t in took[1:])
        print(f"\nRedis stopped: first check failed in {took[0] * 1e3:.2f} ms, then {later}")
        assert max(took) < 0.2
        assert not limiter.available
        assert limiter.failures >= 1
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1  # once per outage, not per call
        own_redis.start()
        await asyncio.sleep(0.25)  # the probe interval
        await admitted_soon(limiter, limits, MIDDAY)  # a fresh Redis
        assert limiter.available
    finally:
        await limiter.close()


async def test_hung_redis_times_out_within_the_socket_timeout(own_redis: Any) -> None:
    limiter = RedisRateLimiter(own_redis.url, timeout_s=0.05, probe_interval_s=0.0)
    limits = TenantLimits(requests_per_minute=60)
    try:
        await admitted_soon(limiter, limits, MIDDAY)
        own_redis.pause()
        started = time.perf_counter()
        with pytest.raises(SharedStateUnavailable):
            await limiter.check("t", limits, 1, MIDDAY)
        elapsed = time.perf_counter() - started
        print(f"\nRedis hung: check failed in {elapsed * 1e3:.1f} ms (socket timeout 50 ms)")
        assert elapsed < 0.2, elapsed
        own_redis.resume()
        await admitted_soon(limiter, limits, MIDDAY + 1)
    finally:
        own_redis.resume()
        await limiter.close()


# -- fair-share counters: Redis unavailable ----------------------------------------------


async def test_outage_keeps_local_sums_and_resyncs(
    own_redis: Any, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = syncs(own_redis.url, interval_s=0.05, timeout_s=0.1)
    got: dict[str, float] = {}

    def apply(pool: str, tenant: str, delta: float) -> None:
        got[tenant] = got.get(tenant, 0.0) + delta

    try:
        a.watch(["p"])
        b.watch(["p"])
        assert await a.sync(apply) and await b.sync(apply)
        a.record("p", "t", 10.0)
        assert await a.sync(apply) and await b.sync(apply)
        assert got == {"t": 10.0}
        own_redis.stop()
        caplog.set_level(logging.WARNING, "fairlane.extproc.shared")
        for _ in range(5):
            a.record("p", "t", 100.0)
            a.record("p", "u", 1.0)
            assert not await a.sync(apply)
        assert not a.available and a.failures == 5
        assert a.tracked() == 3  # two pending sums (not a list of records) + one baseline
        down = [r for r in caplog.records if "unavailable" in r.getMessage()]
        assert len(down) == 1
        own_redis.start()  # an empty Redis: the fields are new
        assert await a.sync(apply)
        assert a.available
        assert await b.sync(apply)
        assert got == {"t": 510.0, "u": 5.0}
    finally:
        for sync in (a, b):
            await sync.close()
