"""What Fairlane charged a tenant for its requests to the e2e tier's vLLM (engine
`vllm`), read from /metrics once the requests have ended."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp

from testkit.metrics import scrape, value
from testkit.vllm_races import MODEL, TIMEOUT


async def completion_tokens_charged(stack: Any, tenant: str) -> float:
    """The tenant's completion tokens so far, once nothing is in flight: a request that
    ended (or was left) just before is charged with its end record, which can come after
    the next test has begun."""
    want = {"tenant": tenant, "model": MODEL, "kind": "completion"}
    deadline = time.monotonic() + 30
    while True:
        text = await scrape(stack.url + "/metrics")
        inflight = value(text, "fairlane_inflight", engine="vllm")
        if not inflight or time.monotonic() > deadline:
            return value(text, "fairlane_tokens_total", **want)
        await asyncio.sleep(0.2)


async def alice_completes(stack: Any, body: dict[str, Any]) -> str:
    """POST /v1/completions as alice: the text of its 200 answer."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(
            stack.url + "/v1/completions", json=body, headers={"x-tenant-id": "alice"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.text()


async def charged_since(stack: Any, before: float, want: float) -> float:
    """Alice's completion tokens charged since she had ``before``, once they reach
    ``want`` or 15 s have passed."""
    deadline, charged = time.monotonic() + 15, 0.0
    while charged < want and time.monotonic() < deadline:
        charged = await completion_tokens_charged(stack, "alice") - before
        await asyncio.sleep(0.2)
    return charged
