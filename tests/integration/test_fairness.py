"""Fair scheduling, limits and live reload through the real stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import pytest

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.ports import free_port

from testkit.metrics import total

pytestmark = pytest.mark.integration
CHAT = "/v1/chat/completions"


def _policy(scheduler: str) -> dict[str, Any]:
    return {
        "version": 1,
        "tenants": {
            "flooder": {},
            "quiet": {},
            "limited": {"limits": {"requests_per_minute": 6, "burst_seconds": 10}},
        },
        "engines": {
            "e": {
                "kind": "sim",
                "preset": "h100-8b",
                "models": ["m"],
                "max_inflight": 1,
                "scheduler": scheduler,
                "queue": {"max_per_tenant": 50, "timeout_s": 30},
            },
        },
    }


async def _chat(
    session: aiohttp.ClientSession, url: str, tenant: str, max_tokens: int = 20, model: str = "m"
) -> tuple[int, dict[str, str], bytes]:
    body = {
        "model": model,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
    }
    async with session.post(url + CHAT, json=body, headers={"x-tenant-id": tenant}) as resp:
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def _finish_order(url: str) -> list[str]:
    """One slot; the flooder queues 6 requests, then the quiet tenant sends one."""
    order: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def run(tenant: str) -> None:
            # A flood request takes ~1 s, so none has finished when the quiet one arrives.
            status, _, _ = await _chat(session, url, tenant, 200 if tenant == "flooder" else 20)
            assert status == 200
            order.append(tenant)

        flood = [asyncio.create_task(run("flooder")) for _ in range(6)]
        await asyncio.sleep(0.3)
        quiet = asyncio.create_task(run("quiet"))
        await asyncio.gather(*flood, quiet)
    return order


@pytest.mark.parametrize(("scheduler", "worst_position"), [("fair", 1), ("fifo", 6)])
async def test_quiet_tenant_jumps_the_flooders_queue(
    stack_factory: Any, scheduler: str, worst_position: int
) -> None:
    stack = stack_factory(_policy(scheduler))
    order = await _finish_order(stack.url)
    position = order.index("quiet")
    if scheduler == "fair":
        # Only the flood request already in service finishes before it.
        assert position <= worst_position, order
    else:
        assert position == worst_position, order  # FIFO: behind every queued flood request


async def test_unnamed_clients_take_turns_in_the_shared_tenant(stack_factory: Any) -> None:
    """Tenants the policy does not name share one (``unknown``), but inside it each id
    sent takes turns: one unnamed client flooding the shared queue neither fills it
    (it gets 429 at half the bound) nor puts another unnamed client behind its backlog."""
    policy = _policy("fair")
    policy["engines"]["e"]["queue"]["max_per_tenant"] = 10
    stack = stack_factory(policy)
    order: list[str] = []
    refusals: list[tuple[int, str]] = []
    async with aiohttp.ClientSession() as session:

        async def run(tenant: str, max_tokens: int) -> None:
            status, _, body = await _chat(session, stack.url, tenant, max_tokens)
            if status == 200:
                order.append(tenant)
            else:
                error = json.loads(body)["error"]
                refusals.append((status, f"{error['code']}: {error['message']}"))

        flood = [asyncio.create_task(run("noisy-client", 200)) for _ in range(12)]
        await asyncio.sleep(0.3)
        quiet = asyncio.create_task(run("quiet-client", 20))
        await asyncio.gather(*flood, quiet)
    # One flood request in service and 5 queued (half the 10 places); 6 refused.
    full = "queue_full: too many queued requests for tenant 'noisy-client' (5)"
    assert refusals == [(429, full)] * 6, refusals
    # Behind the request in service and at most one turn of the flooder's queue.
    assert order.index("quiet-client") <= 2, order


@pytest.mark.parametrize(
    ("headroom", "first", "suffix"),
    [(0.25, True, ""), (0.0, False, ""), (0.25, True, "-unnamed")],
    ids=["headroom", "no-headroom", "headroom-unnamed-ids"],
)
async def test_headroom_admits_a_light_tenant_while_the_flooder_waits(
    stack_factory: Any, headroom: float, first: bool, suffix: str
) -> None:
    """8 slots, 2 reserved. With the quiet tenant active (one long request in flight),
    the flooder fills only 6 and queues the rest; the quiet tenant's next request takes
    a reserved slot at once and finishes before every flood request. Without headroom
    it waits for the flooder's slots to free. (A lone tenant may fill every slot: the
    reserve is held back only while another tenant is active.) Pacing is off: paced, the
    flooder would leave free slots of its own accord. Two ids the policy does not name
    are one tenant, ``unknown``, that splits its share between them: the same holds."""
    policy = _policy("fair")
    policy["engines"]["e"] |= {"max_inflight": 8, "headroom": headroom, "pacing": 0}
    stack = stack_factory(policy)
    order: list[str] = []
    async with aiohttp.ClientSession() as session:

        async def run(name: str, tenant: str, max_tokens: int) -> None:
            status, _, body = await _chat(session, stack.url, tenant, max_tokens)
            assert status == 200, body
            order.append(name)

        quiet, flooder = "quiet" + suffix, "flooder" + suffix
        tasks = [asyncio.create_task(run("quiet-long", quiet, 200))]
        await asyncio.sleep(0.1)
        tasks += [asyncio.create_task(run("flooder", flooder, 200)) for _ in range(12)]
        await asyncio.sleep(0.3)
        tasks.append(asyncio.create_task(run("quiet-short", quiet, 20)))
        await asyncio.gather(*tasks)
    assert (order.index("quiet-short") == 0) is first, order
    admitted = await total(stack.url + "/metrics", "fairlane_headroom_admissions_total")
    assert (admitted >= 1) is first, admitted


async def test_a_burst_under_its_share_is_ranked_behind_a_quiet_tenant(
    stack_factory: Any,
) -> None:
    """The engine priority through Envoy to the simulator (X-Vllm-Priority, echoed as
    x-sim-priority): a tenant's burst under its share is light, as the quiet tenant is,
    and each request ranks by the slots its tenant held; so the quiet tenant's next
    request goes before the burst's later ones in the engine's queue."""
    policy = _policy("fair")
    policy["engines"]["e"] |= {"max_inflight": 16, "inject_priority": True, "pacing": 0}
    stack = stack_factory(policy)
    messages = [{"role": "user", "content": "hi"}]
    body = {"model": "m", "max_tokens": 2000, "stream": True, "messages": messages}
    async with contextlib.AsyncExitStack() as held:
        session = await held.enter_async_context(aiohttp.ClientSession())

        async def open_stream(tenant: str) -> int:
            # Headers come before the first token: the request stays in flight.
            resp = await held.enter_async_context(
                session.post(stack.url + CHAT, json=body, headers={"x-tenant-id": tenant})
            )
            assert resp.status == 200, await resp.text()
            return int(resp.headers["x-sim-priority"])

        alone = await open_stream("quiet")
        burst = [await open_stream("flooder") for _ in range(5)]
        quiet_next = await open_stream("quiet")
    assert alone == PRIORITY_LEVEL_SPAN  # alone in the pool: level 1, rank 0
    assert burst == [0, 1, 2, 3, 4]  # light (5 of a share of 8): level 0, ranked
    assert quiet_next == 1 < burst[-1]


async def test_rate_limit_is_429_with_retry_after_and_reload_lifts_it(stack_factory: Any) -> None:
    policy = _policy("fair")
    stack = stack_factory(policy)
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(2):
            status, headers, body = await _chat(session, stack.url, "limited", max_tokens=1)
            statuses.append(status)
        # burst = 6/min * 10 s = 1 request
        assert statuses == [200, 429]
        error = json.loads(body)["error"]
        assert error["code"] == "rate_limit_exceeded"
        assert int(headers["retry-after"]) >= 1

        policy["tenants"]["limited"]["limits"] = {"requests_per_minute": 6000}
        stack.write_policy(policy)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            async with session.get(stack.url + "/health") as resp:
                if (await resp.json())["config_generation"] >= 2:
                    break
            await asyncio.sleep(0.2)
        status, _, _ = await _chat(session, stack.url, "limited", max_tokens=1)
        assert status == 200


async def test_reload_under_load_loses_nothing(stack_factory: Any) -> None:
    policy = _policy("fair")
    policy["engines"]["e"]["max_inflight"] = 8
    stack = stack_factory(policy)
    async with aiohttp.ClientSession() as session:
        stop = asyncio.Event()
        statuses: list[int] = []

        async def client(tenant: str) -> None:
            while not stop.is_set():
                status, _, _ = await _chat(session, stack.url, tenant, max_tokens=5)
                statuses.append(status)

        clients = [asyncio.create_task(client(t)) for t in ("flooder", "quiet") * 4]
        for weight in (2, 3, 1, 4, 1):
            policy["tenants"]["quiet"]["weight"] = weight
            stack.write_policy(policy)
            await asyncio.sleep(0.6)
        stop.set()
        await asyncio.gather(*clients)
        async with session.get(stack.url + "/health") as resp:
            generation = (await resp.json())["config_generation"]
    assert generation >= 3
    assert statuses and set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


@pytest.mark.parametrize("announce", [True, False])
async def test_each_admitted_request_is_announced_to_the_engine_before_it_arrives(
    stack_factory: Any, announce: bool
) -> None:
    """The worker's datagram to the simulator's scheduler (fairlane.engines.announcements)
    for each request it admits, read before the request it announces gets there: each
    one met, none left to expire. With `announce: false`, none."""
    port = free_port("127.0.0.1")
    policy = _policy("fair")
    policy["engines"]["e"] |= {"max_inflight": 8, "inject_priority": True, "port": port}
    policy["engines"]["e"]["announce"] = announce
    stack = stack_factory(policy)
    async with aiohttp.ClientSession() as session:
        for tenant in ("quiet", "flooder", "quiet"):
            status, _, body = await _chat(session, stack.url, tenant, max_tokens=5)
            assert status == 200, body
    engine = f"http://127.0.0.1:{port}"
    announced = await total(engine + "/metrics", "fairlane_sim_announced_requests_total")
    met = await total(engine + "/metrics", "fairlane_sim_announced_requests_met_total")
    assert (announced, met) == ((3, 3) if announce else (0, 0))
    assert await total(engine + "/metrics", "fairlane_sim_announced_requests_expired_total") == 0
    assert await total(engine + "/metrics", "fairlane_sim_announcement_lead_seconds_count") == met


@pytest.mark.parametrize("announce", [True, None])
async def test_an_external_engine_is_announced_to_when_the_policy_says_it_listens(
    stack_factory: Any, announce: bool | None
) -> None:
    """An engine Fairlane does not start (here the managed simulator again, reached as
    `external` under another model name) is announced to, at its url's host and port,
    only with `announce: true`: Fairlane cannot know it runs the scheduler that listens."""
    port = free_port("127.0.0.1")
    policy = _policy("fair")
    policy["engines"]["e"] |= {"inject_priority": True, "port": port, "args": ["--model", "x"]}
    policy["engines"]["x"] = {
        "kind": "external",
        "url": f"http://127.0.0.1:{port}",
        "models": ["x"],
        "inject_priority": True,  # in the body, as an external vLLM reads it
        **({"announce": announce} if announce is not None else {}),
    }
    stack = stack_factory(policy)
    async with aiohttp.ClientSession() as session:
        for tenant in ("quiet", "flooder"):
            status, _, body = await _chat(session, stack.url, tenant, max_tokens=5, model="x")
            assert status == 200, body
    engine = f"http://127.0.0.1:{port}"
    announced = await total(engine + "/metrics", "fairlane_sim_announced_requests_total")
    met = await total(engine + "/metrics", "fairlane_sim_announced_requests_met_total")
    assert (announced, met) == ((2, 2) if announce else (0, 0))
