"""The supervisor with real simulator processes, within its limits: lazy loading and
eviction under the memory budget, and an adaptive in-flight limit that follows the
engine's batch. Every test starts its own stack.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from testkit.engines import CHAT, post_chat
from testkit.metrics import samples, value

pytestmark = pytest.mark.integration


def _lazy(model: str, pinned: bool = False) -> dict[str, Any]:
    return {
        "kind": "sim",
        "preset": "h100-8b",
        "models": [model],
        "lazy": True,
        "pinned": pinned,
        "gpu_memory_gb": 40,
        "queue": {"timeout_s": 60},
    }


async def test_lazy_loading_and_eviction_under_a_budget(stack_factory: Any) -> None:
    stack = stack_factory(
        {
            "version": 1,
            "gpu_memory_budget_gb": 80,
            "engines": {"a": _lazy("ma", pinned=True), "b": _lazy("mb"), "c": _lazy("mc")},
        }
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/health") as resp:
            health = await resp.json()
        assert resp.status == 200  # lazy engines missing is not unhealthy
        assert health["missing_models"] == ["ma", "mb", "mc"]

        for model in ("ma", "mb"):
            status, _, text = await post_chat(session, stack.url, model)
            assert status == 200, text
        assert {n: e["state"] for n, e in stack.engine_states().items()} == {
            "a": "up",
            "b": "up",
            "c": "idle",
        }

        # c needs 40 GB more than the budget allows: b (not pinned, idle) makes room.
        status, _, text = await post_chat(session, stack.url, "mc")
        assert status == 200, text
        states = {n: e["state"] for n, e in stack.engine_states().items()}
        assert states == {"a": "up", "b": "idle", "c": "up"}

        text = await stack.metrics()
        assert value(text, "fairlane_model_loads_total", engine="c") == 1
        assert value(text, "fairlane_model_evictions_total", engine="b") == 1
        assert value(text, "fairlane_model_evictions_total", engine="a") == 0
        assert value(text, "fairlane_model_load_seconds_count", engine="c") == 1

        # And b comes back on demand, evicting c (a is pinned).
        status, _, _ = await post_chat(session, stack.url, "mb")
        assert status == 200
        assert stack.engine_states()["c"]["state"] == "idle"


async def test_adaptive_limit_follows_the_engine_batch(stack_factory: Any) -> None:
    """The tiny preset runs 8 sequences at once: an adaptive limit starting at 48 must
    come down to about that, so the queue stays in Fairlane instead of the engine."""
    stack = stack_factory(
        {
            "version": 1,
            "engines": {
                "e": {
                    "kind": "sim",
                    "preset": "tiny",
                    "models": ["m"],
                    "max_inflight": 48,
                    "adaptive": {"min_inflight": 2, "interval_s": 0.1},
                    "queue": {"max_per_tenant": 100, "timeout_s": 60},
                }
            },
        }
    )
    async with aiohttp.ClientSession() as session:
        body = {"model": "m", "max_tokens": 150, "messages": [{"role": "user", "content": "x"}]}

        async def one() -> int:
            async with session.post(
                stack.url + CHAT, json=body, headers={"x-tenant-id": "t"}
            ) as resp:
                await resp.read()
                return resp.status

        flood = [asyncio.create_task(one()) for _ in range(40)]
        lowest = 48.0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(t.done() for t in flood):
            for name, labels, limit in samples(await stack.metrics()):
                if name == "fairlane_engine_capacity" and labels == {"engine": "e"}:
                    lowest = min(lowest, limit)
            await asyncio.sleep(0.1)
        statuses = await asyncio.gather(*flood)
    assert set(statuses) == {200}
    assert lowest <= 12, lowest
