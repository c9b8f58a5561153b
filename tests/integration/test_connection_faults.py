"""Connections that end early or back up, against a real `fairlane serve`: clients that
leave at every stage (queued, before the first token, mid-stream), an engine that drops
connections unanswered, and a client that stops reading a fast stream.

Every wait is bounded; every stack is stopped by PID and checked for surviving children
(conftest). Measured numbers are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import statistics
import time
from collections.abc import Awaitable
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, SHORT, build, chat, post, wait_healthy
from testkit.metrics import assert_at_rest, metric, metric_is, total
from testkit.policies import faults_policy
from testkit.waits import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any, fake: Any) -> Any:
    return stack_factory(faults_policy(fake))


# -- client disconnects ----------------------------------------------------------------------


async def _open_stream(
    stack: Any, body: dict[str, Any], tenant: str
) -> tuple[aiohttp.ClientSession, aiohttp.ClientResponse]:
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    resp = await session.post(stack.url + CHAT, json=body, headers={"x-tenant-id": tenant})
    return session, resp


async def _engine_running(stack: Any, engine: str) -> float:
    port = stack.engine_states()[engine]["port"]
    return await total(f"http://127.0.0.1:{port}/metrics", "vllm:num_requests_running")


async def test_disconnect_while_queued(stack: Any) -> None:
    await wait_healthy(stack)
    hold = asyncio.create_task(post(stack, chat("model-one", 150), tenant="alice"))
    assert await eventually(lambda: metric_is(stack, 1, "fairlane_inflight", engine="one"), 5)
    queued = asyncio.create_task(post(stack, chat("model-one", 2), tenant="bob"))
    assert await eventually(
        lambda: metric_is(stack, 1, "fairlane_queue_depth", engine="one", tenant="bob"), 5
    )
    queued.cancel()  # closes the connection while the request waits for a slot
    assert await eventually(
        lambda: metric_is(stack, 0, "fairlane_queue_depth", engine="one", tenant="bob"), 5
    )
    assert (await hold)[0] == 200
    await assert_at_rest(stack)
    # The slot the cancelled request never got is still there for the next one.
    assert (await post(stack, chat("model-one", 2), tenant="bob"))[0] == 200


async def test_disconnect_before_first_token(stack: Any) -> None:
    """A prompt whose prefill takes seconds: the client leaves after the headers and
    before any token; Fairlane's slot and the engine's sequence are both freed."""
    await wait_healthy(stack)
    body = chat("model-a", 50, stream=True)
    body["messages"][0]["content"] = "word " * 80_000  # ~100k tokens: ~10 s of prefill
    session, resp = await _open_stream(stack, body, "alice")
    try:
        assert resp.status == 200
        assert await eventually(lambda: metric_is(stack, 1, "fairlane_inflight", engine="big"), 5)
        assert await eventually(lambda: _is(_engine_running(stack, "big"), 1), 5)
        assert resp.content.total_bytes == 0  # headers only: no token yet
    finally:
        resp.close()
        await session.close()
    await assert_at_rest(stack)
    assert await eventually(lambda: _is(_engine_running(stack, "big"), 0), 5)


async def test_disconnect_mid_stream(stack: Any) -> None:
    await wait_healthy(stack)
    closed = {"tenant": "alice", "model": "model-a", "outcome": "client_closed"}
    before = await metric(stack, "fairlane_requests_total", **closed)
    session, resp = await _open_stream(stack, chat("model-a", 2000, stream=True), "alice")
    try:
        assert resp.status == 200
        for _ in range(10):
            async with asyncio.timeout(5):
                await resp.content.readline()
        assert await _engine_running(stack, "big") == 1
    finally:
        resp.close()
        await session.close()
    await assert_at_rest(stack)
    assert await eventually(lambda: _is(_engine_running(stack, "big"), 0), 5)
    # Counted as the client's leaving, not as an answer served (status 200 was sent).
    counted = eventually(
        lambda: metric_is(stack, before + 1, "fairlane_requests_total", **closed), 5
    )
    assert await counted


async def test_clients_that_leave_at_once_leave_no_slot_behind(stack: Any) -> None:
    """Thousands of requests whose clients hang up within ~20 ms, while they are read,
    queued, or as their decision is sent: whatever the moment, no slot stays taken and
    nothing stays queued (a decision that never reached Envoy is withdrawn when its
    end-of-request record, or the end of its stream, says the client left)."""
    await wait_healthy(stack)
    rng = random.Random(7)

    async def client(end: float) -> None:
        while time.monotonic() < end:
            body = json.dumps(chat(rng.choice(["model-a", "model-one"]), 200)).encode()
            tenant = rng.choice(["alice", "bob", "carol"]).encode()
            await _send_and_leave(stack, _json_post(body, tenant), rng.uniform(0, 0.02))

    end = time.monotonic() + 4
    await asyncio.gather(*(client(end) for _ in range(40)))
    await assert_at_rest(stack, timeout_s=10)
    withdrawn = await total(stack.url + "/metrics", "fairlane_leases_withdrawn_total")
    print(f"\nslots withdrawn after their decision was lost: {withdrawn:.0f}")
    assert (await post(stack, chat("model-one", 2), tenant="alice"))[0] == 200


async def test_a_client_cannot_name_the_slot_its_departure_gives_back(stack: Any) -> None:
    """The request id a slot is kept under is Envoy's own: one a client sends is
    overwritten, so a client that leaves before any answer, claiming a streaming
    request's id, gives nothing of that request's back."""
    await wait_healthy(stack)
    forged = {"x-tenant-id": "alice", "x-fairlane-request-id": "mine"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        body = chat("model-a", 2000, stream=True)
        async with session.post(stack.url + CHAT, json=body, headers=forged) as streaming:
            assert streaming.status == 200
            await streaming.content.readline()
            # Leaves halfway through its body: an end record with no answer (status 0).
            raw = _json_post(
                json.dumps(body).encode(), b"alice", (b"x-fairlane-request-id", b"mine")
            )
            await _send_and_leave(stack, raw[: len(raw) - 50], 0.0)
            await asyncio.sleep(1)  # its record has long reached the worker
            assert await metric(stack, "fairlane_inflight", engine="big") == 1
            await streaming.content.readline()  # still streaming
    await assert_at_rest(stack)


def _json_post(body: bytes, tenant: bytes, *headers: tuple[bytes, bytes]) -> bytes:
    pairs = [(b"x-tenant-id", tenant), (b"content-type", b"application/json"), *headers]
    return build(b"POST", CHAT.encode(), pairs, body)


async def _send_and_leave(stack: Any, raw: bytes, after_s: float) -> None:
    """Send ``raw`` on a fresh connection and abort it ``after_s`` later, unanswered."""
    _, writer = await asyncio.open_connection("127.0.0.1", stack.port)
    writer.write(raw)
    await writer.drain()
    await asyncio.sleep(after_s)
    writer.transport.abort()


async def _is(value: Awaitable[float], want: float) -> bool:
    return await value == want


# -- an engine dropping connections ------------------------------------------------------------


async def test_a_connection_the_engine_drops_unanswered_is_retried_once(
    stack: Any, fake: Any
) -> None:
    """The engine closes the connection a request came on without answering (as when a
    keep-alive connection times out just as Envoy reuses it): Envoy sends it again, the
    client sees a 200, and the engine is not taken out of routing."""
    await wait_healthy(stack)
    user = f"drop-{time.monotonic_ns()}"
    before = fake.stats()["requests"]
    status, _, body = await post(stack, {**chat("fake-drop-once"), "user": user})
    assert status == 200, body
    assert user in fake.stats()["dropped"]
    assert fake.stats()["requests"] - before == 2  # the dropped one and the retry
    status, _, body = await post(stack, chat("fake-echo"))
    assert status == 200, body  # not quarantined
    await assert_at_rest(stack)


async def test_many_connections_dropped_at_once_are_all_retried(stack: Any, fake: Any) -> None:
    """After a quiet spell, many pooled connections can be stale together (the engine
    closing its keep-alives): every request on one is retried, however many retries are
    in flight at once (Fairlane's admission bounds them, not a cluster-wide cap)."""
    await wait_healthy(stack)
    users = [f"drop-many-{i}-{time.monotonic_ns()}" for i in range(8)]
    bodies = [{**chat("fake-drop-once"), "user": user, "delay_s": 1.0} for user in users]
    replies = await asyncio.gather(*(post(stack, body) for body in bodies))
    assert [status for status, _, _ in replies] == [200] * len(users), replies
    assert set(users) <= set(fake.stats()["dropped"])
    await assert_at_rest(stack)


# -- slow reader ---------------------------------------------------------------------------------


async def test_slow_client_is_isolated_and_bounded(stack: Any, fake: Any) -> None:
    """A client that stops reading a fast stream: Envoy pushes back to the engine instead
    of buffering, and another tenant's latency does not move."""

    async def latency() -> float:
        start = time.monotonic()
        status, _, _ = await post(stack, chat("model-a", 4), tenant="bob")
        assert status == 200
        return time.monotonic() - start

    async def envoy_allocated() -> int:
        async with (
            aiohttp.ClientSession(timeout=SHORT) as session,
            session.get(stack.admin + "/memory") as resp,
        ):
            return int(json.loads(await resp.text())["allocated"])

    await wait_healthy(stack)
    baseline = [await latency() for _ in range(5)]
    memory_before = await envoy_allocated()
    written_before = fake.stats()["firehose_bytes"]

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    try:
        sock.connect(("127.0.0.1", stack.port))
        body = json.dumps(chat("fake-firehose", 512 * 1024, stream=True)).encode()  # 512 MiB
        head = (
            f"POST {CHAT} HTTP/1.1\r\nHost: fairlane\r\nX-Tenant-ID: alice\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
        assert sock.recv(64).startswith(b"HTTP/1.1 200")
        during: list[float] = []
        peak = 0
        until = time.monotonic() + 5  # the client reads nothing more for 5 s
        while time.monotonic() < until:
            during.append(await latency())
            peak = max(peak, await envoy_allocated())
            await asyncio.sleep(0.1)
        written = fake.stats()["firehose_bytes"] - written_before
    finally:
        sock.close()
    print(
        f"\nslow reader: engine wrote {written / 2**20:.1f} MiB in 5 s; Envoy allocated "
        f"{memory_before / 2**20:.1f} -> peak {peak / 2**20:.1f} MiB; other tenant latency "
        f"median {statistics.median(baseline) * 1000:.0f} -> "
        f"{statistics.median(during) * 1000:.0f} ms, max {max(during) * 1000:.0f} ms"
    )
    assert written < 64 * 2**20, "the engine was never pushed back"
    # Envoy holds ~1 MiB for it (its per-connection buffer), not listener.max_body_bytes:
    # measured +1.6 MiB, and +17 MiB when that was the limit.
    assert peak - memory_before < 6 * 2**20
    assert max(during) < 2.0
    assert statistics.median(during) < 3 * statistics.median(baseline) + 0.2
    await assert_at_rest(stack)
