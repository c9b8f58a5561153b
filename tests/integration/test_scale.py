"""Two real `fairlane serve` gateways sharing tenant state through a real Redis, in front
of one shared simulator engine."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fairlane.ports import free_port

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def shared_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A simulator both gateways reach as an external engine."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("sim") / "sim.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-P",
            "-m",
            "fairlane.engines.sim",
            "--preset",
            "h100-8b",
            "--port",
            str(port),
            "--model",
            "m",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    yield f"http://127.0.0.1:{port}"
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
    log.close()


def _policy(engine_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "version": 1,
        "state": {"kind": "redis", "url": redis_url, "sync_interval_s": 0.1},
        "tenants": {
            "limited": {"limits": {"requests_per_minute": 6, "burst_seconds": 10}},
            "free": {},
        },
        "engines": {
            "shared": {"kind": "external", "url": engine_url, "models": ["m"], "max_inflight": 16}
        },
    }


async def _chat(session: aiohttp.ClientSession, url: str, tenant: str) -> tuple[int, str]:
    body = {"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(url + CHAT, json=body, headers={"x-tenant-id": tenant}) as resp:
        return resp.status, await resp.text()


async def test_buckets_are_exact_across_gateways_and_survive_redis_outage(
    stack_factory: Any, shared_engine: str, own_redis: Any
) -> None:
    a = stack_factory(_policy(shared_engine, own_redis.url))
    b = stack_factory(_policy(shared_engine, own_redis.url))
    async with aiohttp.ClientSession() as session:
        # Burst of one request per 10 s window, shared: the second gateway must refuse.
        assert (await _chat(session, a.url, "limited"))[0] == 200
        status, text = await _chat(session, b.url, "limited")
        assert status == 429, text
        assert json.loads(text)["error"]["code"] == "rate_limit_exceeded"
        async with session.get(b.url + "/health") as resp:
            assert (await resp.json())["shared_state"] == {"limits": "up", "counters": "up"}

        own_redis.stop()
        # Redis gone: each gateway serves on its own state (degraded, not down).
        statuses = [(await _chat(session, gw.url, "free"))[0] for gw in (a, b)]
        assert statuses == [200, 200]
        assert (await _chat(session, a.url, "limited"))[0] in (200, 429)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            async with session.get(a.url + "/health") as resp:
                health = await resp.json()
            if health["shared_state"]["counters"] == "unavailable":
                break
            await asyncio.sleep(0.1)
        assert resp.status == 200
        assert health["shared_state"]["counters"] == "unavailable"
        async with session.get(a.url + "/metrics") as resp:
            text = await resp.text()
        assert 'fairlane_shared_state_up{part="counters"} 0.0' in text

        own_redis.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with session.get(a.url + "/health") as resp:
                if (await resp.json())["shared_state"]["counters"] == "up":
                    break
            await asyncio.sleep(0.1)
        assert (await _chat(session, a.url, "free"))[0] == 200
        async with session.get(a.url + "/health") as resp:
            assert (await resp.json())["shared_state"]["counters"] == "up"
