"""Hostile load on a real stack's shared limit: a storm of random tenant ids (one shared
limit, no series per id), and a bad policy file written while serving (the old policy
stays)."""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, SHORT, build, exchange
from testkit.metrics import scrape, value

pytestmark = pytest.mark.integration

RPM = 60.0
BURST_S = 10.0


@pytest.fixture(scope="module")
def limited(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "tenants": {"alice": {}},
            "unknown_tenants": {
                "mode": "shared",
                "limits": {"requests_per_minute": RPM, "burst_seconds": BURST_S},
            },
            "engines": {"fast": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
        }
    )


async def test_random_tenant_storm_gets_one_shared_limit(limited: Any) -> None:
    body = {"model": "model-a", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
    statuses: dict[int, int] = {}
    ids: list[str] = []
    bad: list[str] = []

    async def send(session: aiohttp.ClientSession, count: int) -> None:
        for _ in range(count):
            tenant = f"storm-{uuid.uuid4().hex}"
            ids.append(tenant)
            async with session.post(
                limited.url + CHAT, json=body, headers={"x-tenant-id": tenant}
            ) as resp:
                raw = await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if resp.status == 429:
                    error = json.loads(raw)["error"]
                    if error["code"] != "rate_limit_exceeded" or "retry-after" not in resp.headers:
                        bad.append(raw.decode())
                elif resp.status != 200:
                    bad.append(f"{resp.status} {raw[:100]!r}")

    async def storm(total: int, concurrency: int) -> None:
        connector = aiohttp.TCPConnector(limit=concurrency)
        async with aiohttp.ClientSession(connector=connector, timeout=SHORT) as session:
            await asyncio.gather(*(send(session, total // concurrency) for _ in range(concurrency)))

    start = time.monotonic()
    await storm(40, 4)  # warm-up: the unknown class's series exist, its burst is spent
    before = await scrape(limited.url + "/metrics")
    await storm(2000, 20)
    elapsed = time.monotonic() - start
    after = await scrape(limited.url + "/metrics")

    admitted = statuses.get(200, 0)
    bound = RPM / 60 * (elapsed + BURST_S)
    print(
        f"\nstorm: {sum(statuses.values())} requests from {len(set(ids))} tenant ids in "
        f"{elapsed:.1f}s: {statuses}; limit {bound:.1f}; /metrics {len(before)} -> "
        f"{len(after)} bytes"
    )
    assert bad == []
    assert 1 <= admitted <= math.floor(bound) + 1
    deadline = time.monotonic() + 5  # the last end-of-request records are on their way
    counted = value(after, "fairlane_requests_total", tenant="unknown")
    while counted != admitted and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        metrics = await scrape(limited.url + "/metrics")
        counted = value(metrics, "fairlane_requests_total", tenant="unknown")
    assert counted == admitted
    series = [line for line in before.splitlines() if not line.startswith("#")]
    assert len([line for line in after.splitlines() if not line.startswith("#")]) == len(series)
    assert len(after) - len(before) < 512  # only digits of counters grew
    assert not any(t in after for t in ids[:50])


# -- a bad policy while serving ------------------------------------------------------------


async def test_bad_policy_keeps_old_policy(limited: Any) -> None:
    async def ok() -> bool:
        body = {"model": "model-a", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
        async with (
            aiohttp.ClientSession(timeout=SHORT) as session,
            session.post(limited.url + CHAT, json=body, headers={"x-tenant-id": "alice"}) as resp,
        ):
            return resp.status == 200

    async def wait_for(name: str, want: float) -> None:
        deadline = time.monotonic() + 15
        while value(await scrape(limited.url + "/metrics"), name) != want:
            assert await ok(), "a request failed while the bad policy was on disk"
            assert time.monotonic() < deadline, f"{name} never reached {want}"
            await asyncio.sleep(0.2)

    metrics = await scrape(limited.url + "/metrics")
    failures = value(metrics, "fairlane_config_reload_failures_total")
    generation = value(metrics, "fairlane_config_generation")
    good = limited.policy_path.read_text()
    try:
        limited.policy_path.write_text(good + "\nengines: [unclosed\n")  # invalid YAML
        await wait_for("fairlane_config_reload_failures_total", failures + 1)
        limited.policy_path.write_text(good.replace("tenants:", "tenantz:"))  # unknown key
        await wait_for("fairlane_config_reload_failures_total", failures + 2)
        for _ in range(5):
            assert await ok()
        metrics = await scrape(limited.url + "/metrics")
        assert value(metrics, "fairlane_config_generation") == generation
    finally:
        limited.write_policy(limited.policy)
    await wait_for("fairlane_config_generation", generation + 1)
    assert await ok()
    health = exchange(limited.port, build(b"GET", b"/health", [], b""), "GET")
    assert health.status == 200
