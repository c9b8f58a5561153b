"""Races in a real vLLM's waiting queue, for the e2e tests of the priority Fairlane gives
it: requests through Fairlane to a vLLM that runs one at a time (``--max-num-seqs 1``,
``--enable-per-request-metrics``), timed by vLLM's own per-request metrics."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import time
from typing import Any

import aiohttp

MODEL = "tiny-llama"
CHAT = "/v1/chat/completions"
TIMEOUT = aiohttp.ClientTimeout(total=60)
RACE_ATTEMPTS = 5  # a race that cannot show a queue in vLLM is run again
# Each race request takes ~1.5 s on 2 cores, so ten queue for ~15 s: longer than the
# seconds by which a starved gateway or client can delay a request, which made a late
# request look as if it reached vLLM after the queue drained (240 tokens: 0-1 of 5 races
# conclusive). That starvation was vLLM at nice 0 (docs/engines.md, "CPU priority");
# at nice 10 the late request reaches vLLM ~1.0 s after the early ones.
RACE_MAX_TOKENS = 480


def chat(max_tokens: int = 8, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "stream": stream,
        # Random weights say </s> whenever they like; ignore_eos makes lengths exact.
        "ignore_eos": True,
        "messages": [{"role": "user", "content": "Hello there"}],
        **extra,
    }


async def post(
    stack: Any, body: dict[str, Any], tenant: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    sent = {"x-tenant-id": tenant, **(headers or {})}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(stack.url + CHAT, json=body, headers=sent) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


@dataclasses.dataclass
class Timing:
    """One request as vLLM's engine saw it (`--enable-per-request-metrics`), and when
    its answer reached the client (this process's monotonic clock)."""

    queued_s: float  # engine arrival to first scheduled
    served_s: float  # first scheduled to last token
    answered_at: float

    @classmethod
    def of(cls, reply: dict[str, Any], answered_at: float) -> Timing:
        m = reply["metrics"]
        served_ms = m["time_to_first_token_ms"] + m["generation_time_ms"]
        return cls(m["queue_time_ms"] / 1e3, served_ms / 1e3, answered_at)

    @property
    def engine_arrival_by(self) -> float:
        """The latest it can have reached vLLM's scheduler: its answer left the engine
        queued_s + served_s after that, and reached us no sooner."""
        return self.answered_at - self.queued_s - self.served_s


@dataclasses.dataclass
class Race:
    sent_at: float  # when the early requests were sent
    early: list[Timing]
    late: Timing

    @property
    def longest_service_s(self) -> float:
        return max(t.served_s for t in self.early)

    @property
    def typical_service_s(self) -> float:
        return statistics.median(t.served_s for t in self.early)

    @property
    def waiting_when_late_arrived(self) -> int:
        """Early requests surely still waiting in vLLM's scheduler when the late one
        reached it: each waited there until at least sent_at + its queued_s.

        On 2 cores vLLM (or anything on the way) can hold a request for seconds before
        its scheduler sees it; a late request that reaches it after the queue drained
        is scheduled at once in any order, and its race proves nothing either way.
        """
        arrival = self.late.engine_arrival_by
        return sum(self.sent_at + t.queued_s > arrival for t in self.early)

    @property
    def conclusive(self) -> bool:
        return self.waiting_when_late_arrived >= 3


async def race(
    stack: Any,
    late_tenant: str,
    late_headers: dict[str, str] | None = None,
    late_body: dict[str, Any] | None = None,
    early: int = 10,
) -> Race:
    """`early` requests from tenant bulk (class batch), then, a second later (vLLM
    serves one in ~1.4 s: most are still queued), one request from late_tenant;
    again (up to RACE_ATTEMPTS) if the timings cannot show that the late request met
    a queue in vLLM (`Race.conclusive`).

    vLLM runs one request at a time, so the late one waits in vLLM's queue for the
    running one only if vLLM put it first (it saw a better priority), for everything
    queued before it if not. The timings are vLLM's engine's own: on 2 cores its
    outputs sometimes reach the API server seconds late and in bunches, so the order
    in which clients see answers finish proves nothing.
    """

    async def one(tenant: str, headers: dict[str, str] | None = None, **fields: Any) -> Timing:
        status, _, body = await post(
            stack, chat(max_tokens=RACE_MAX_TOKENS, **fields), tenant, headers
        )
        assert status == 200, body[:300]
        return Timing.of(json.loads(body), time.monotonic())

    for _ in range(RACE_ATTEMPTS):
        async with asyncio.timeout(120):
            sent_at = time.monotonic()
            earlies = [asyncio.create_task(one("bulk")) for _ in range(early)]
            await asyncio.sleep(1.0)
            late = await one(late_tenant, late_headers, **(late_body or {}))
            result = Race(sent_at, await asyncio.gather(*earlies), late)
        print(
            f"\n{late_tenant} queued {late.queued_s:.2f}s in vLLM, reached it by "
            f"+{late.engine_arrival_by - sent_at:.2f}s, with "
            f"{result.waiting_when_late_arrived} early requests still waiting; one "
            f"request takes {result.typical_service_s:.2f}s "
            f"(longest {result.longest_service_s:.2f}s)"
        )
        if result.conclusive:
            return result
    raise AssertionError(f"the late request never met a queue in vLLM: {result}")
