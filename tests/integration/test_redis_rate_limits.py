"""Rate limits shared through a real Redis: two limiters are two gateways, and the
buckets, quotas, corrections and Retry-After are exact across them.

A module-scoped ``redis-server`` serves every test (each uses its own key prefix); it
runs in its own process group and is stopped by PID.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fairlane.extproc.limits import RateLimiter, TenantLimits, Verdict
from fairlane.extproc.shared.redis_limits import RedisRateLimiter

from testkit.redis_state import MIDDAY

pytestmark = pytest.mark.integration


@pytest.fixture
async def gateways(redis_server: Any) -> AsyncIterator[tuple[RedisRateLimiter, ...]]:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    pair = (
        RedisRateLimiter(redis_server.url, prefix=prefix, timeout_s=1.0),
        RedisRateLimiter(redis_server.url, prefix=prefix, timeout_s=1.0),
    )
    yield pair
    for limiter in pair:
        await limiter.close()


async def test_bucket_is_exact_across_two_gateways(
    gateways: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = gateways
    limits = TenantLimits(requests_per_minute=600, burst_seconds=5)  # burst: 50 requests
    calls = [(a if i % 2 else b).check("t", limits, 10, MIDDAY) for i in range(400)]
    verdicts = await asyncio.gather(*calls)
    assert sum(v.admitted for v in verdicts) == 50
    # 2 s later, 2 s of rate (10/s) more: exactly 20, whichever gateway asks.
    calls = [(a if i % 3 else b).check("t", limits, 10, MIDDAY + 2) for i in range(200)]
    assert sum(v.admitted for v in await asyncio.gather(*calls)) == 20


async def test_token_bucket_all_or_nothing_across_gateways(
    gateways: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = gateways
    # Requests allow 50, tokens 500 / 100 = 5: the tighter one decides, and a refused
    # request charges neither bucket (the request bucket still has 45 left afterwards).
    limits = TenantLimits(requests_per_minute=600, tokens_per_minute=6000, burst_seconds=5)
    verdicts = await asyncio.gather(
        *[(a if i % 2 else b).check("t", limits, 100, MIDDAY) for i in range(100)]
    )
    assert sum(v.admitted for v in verdicts) == 5
    small = await asyncio.gather(*[b.check("t", limits, 0, MIDDAY) for _ in range(60)])
    assert sum(v.admitted for v in small) == 45


async def test_quota_is_exact_across_two_gateways(
    gateways: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = gateways
    limits = TenantLimits(tokens_per_day=1000)
    verdicts = await asyncio.gather(
        *[(a if i % 2 else b).check("t", limits, 30, MIDDAY + i * 1e-3) for i in range(100)]
    )
    assert sum(v.admitted for v in verdicts) == 33  # 33 * 30 = 990; a 34th would pass 1000
    refused = await a.check("t", limits, 30, MIDDAY + 1)
    assert refused == Verdict(False, "quota_exceeded", 43_199.0)  # until UTC midnight
    # A correction on the other gateway gives room back; the new day starts from zero.
    await b.correct("t", -60, MIDDAY + 2)
    assert (await a.check("t", limits, 30, MIDDAY + 3)).admitted
    assert (await b.check("t", limits, 1000, MIDDAY + 43_200)).admitted


async def test_corrections_across_gateways(
    gateways: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    a, b = gateways
    limits = TenantLimits(tokens_per_minute=600, burst_seconds=10)  # 10/s, burst 100
    assert (await a.check("t", limits, 100, MIDDAY)).admitted
    assert not (await b.check("t", limits, 10, MIDDAY)).admitted
    await b.correct("t", -50, MIDDAY)  # used 50 of the 100 estimated
    assert (await a.check("t", limits, 50, MIDDAY)).admitted
    await a.correct("t", 150, MIDDAY)  # used 200 of 50: the bucket goes to -150
    verdict = await b.check("t", limits, 10, MIDDAY)
    assert verdict == Verdict(False, "rate_limited", 16.0)  # (10 + 150) / 10 per s


async def test_retry_after_matches_the_local_limiter(
    gateways: tuple[RedisRateLimiter, RedisRateLimiter],
) -> None:
    """The same random sequence on the local limiter and on two gateways alternating:
    identical verdicts, Retry-After included (limit changes and midnight included)."""
    rng = random.Random(7)
    local = RateLimiter()
    configs = [
        TenantLimits(requests_per_minute=60, tokens_per_minute=3000, burst_seconds=5),
        TenantLimits(tokens_per_minute=1200, burst_seconds=20, tokens_per_day=40_000),
        TenantLimits(requests_per_minute=30, burst_seconds=2, tokens_per_day=9_000),
        TenantLimits(requests_per_minute=120, tokens_per_minute=6000, tokens_per_day=1e5),
    ]
    tenants = {name: rng.choice(configs) for name in ("x", "y", "z")}
    inflight: list[tuple[str, float]] = []
    now = MIDDAY + 40_000  # midnight comes up after ~3200 s
    outcomes: list[Verdict] = []
    for _ in range(1500):
        now += rng.expovariate(1 / 2.5)
        if rng.random() < 0.02:
            tenants[rng.choice("xyz")] = rng.choice(configs)  # a policy reload
        gateway = rng.choice(gateways)
        if inflight and rng.random() < 0.4:
            tenant, est = inflight.pop(rng.randrange(len(inflight)))
            delta = rng.uniform(-est, est)
            local.correct(tenant, delta, now)
            await gateway.correct(tenant, delta, now)
            continue
        tenant = rng.choice("xyz")
        est = float(rng.randint(1, 400))
        expected = local.check(tenant, tenants[tenant], est, now)
        got = await gateway.check(tenant, tenants[tenant], est, now)
        assert got == expected, (tenant, tenants[tenant], est, now)
        outcomes.append(got)
        if got.admitted:
            inflight.append((tenant, est))
    reasons = {v.reason for v in outcomes}
    assert reasons == {None, "rate_limited", "quota_exceeded"}  # every path was taken
    assert len({v.retry_after_s for v in outcomes}) > 5


async def test_idle_tenants_expire(gateways: tuple[RedisRateLimiter, RedisRateLimiter]) -> None:
    a, _ = gateways
    a.inflight_ttl_s = 30.0
    fast = TenantLimits(requests_per_minute=6000, burst_seconds=1)  # refills in 10 ms
    quota = TenantLimits(tokens_per_day=1000)
    now = time.time()
    assert (await a.check("fast", fast, 1, now)).admitted
    assert (await a.check("quota", quota, 10, MIDDAY)).admitted
    # In flight: kept for inflight_ttl_s after the admission.
    assert 29_000 < await a.redis.pttl(a.key("fast")) <= 31_000
    await a.correct("fast", 0, now)
    # Corrected, bucket full within 10 ms: the key lives about a second more.
    assert 0 < await a.redis.pttl(a.key("fast")) <= 1_100
    # Quota used today: kept until UTC midnight (+1 s).
    await a.correct("quota", 0, MIDDAY)
    assert abs(await a.redis.pttl(a.key("quota")) - 43_201_000) < 1_000
    await asyncio.sleep(1.2)
    assert not await a.redis.exists(a.key("fast"))
    # A correction for an expired tenant changes nothing and creates nothing.
    await a.correct("fast", 500, now + 2)
    assert not await a.redis.exists(a.key("fast"))


async def test_check_latency(gateways: tuple[RedisRateLimiter, RedisRateLimiter]) -> None:
    """The added cost of one shared check (one EVALSHA round trip), printed."""
    a, _ = gateways
    limits = TenantLimits(requests_per_minute=1e9, tokens_per_minute=1e12, tokens_per_day=1e15)
    local = RateLimiter()
    for _ in range(50):  # warm up: connection, script cache
        await a.check("warm", limits, 100, time.time())
    shared, plain = [], []
    for _ in range(1000):
        started = time.perf_counter()
        verdict = await a.check("lat", limits, 100, time.time())
        shared.append(time.perf_counter() - started)
        assert verdict.admitted
        started = time.perf_counter()
        local.check("lat", limits, 100, time.time())
        plain.append(time.perf_counter() - started)
    ping = []
    for _ in range(1000):
        started = time.perf_counter()
        await a.redis.ping()
        ping.append(time.perf_counter() - started)

    def pct(xs: list[float], q: int) -> float:
        return statistics.quantiles(xs, n=100)[q - 1] * 1e3

    print(
        f"\nshared check: p50 {pct(shared, 50):.3f} ms, p99 {pct(shared, 99):.3f} ms; "
        f"PING p50 {pct(ping, 50):.3f} ms, p99 {pct(ping, 99):.3f} ms; "
        f"local check p50 {pct(plain, 50) * 1e3:.1f} us"
    )
    assert pct(shared, 50) < 5.0  # loopback; generous for a loaded CI machine
