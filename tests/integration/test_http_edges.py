"""HTTP at its edges against a real stack: a header past Envoy's limit, Expect headers,
WebSocket upgrades, a body trickled in a byte at a time, and a burst of requests past
gRPC's own admission. Each must get Fairlane's answer, not a hang or a dropped call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, build, exchange, openai_error
from testkit.policies import hostile_input_policy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(hostile_input_policy())


def test_header_beyond_envoy_limit_gets_an_answer(stack: Any) -> None:
    """A 70 KB X-Tenant-ID is past Envoy's 60 KiB header limit: a 431, not a hang."""
    raw = build(b"POST", CHAT.encode(), [(b"X-Tenant-ID", b"t" * 70_000)], b"{}")
    answer = exchange(stack.port, raw, "POST")
    assert answer.status == 431
    assert openai_error(answer) is None, answer


def test_a_header_within_envoys_limit_reaches_the_engine(stack: Any) -> None:
    """A 50 KB header passes Envoy's 60 KiB limit and goes on to the engine, which must
    serve it too (the simulator answered a plain-text 400 past 8 KiB)."""
    message = {"role": "user", "content": "hi"}
    body = json.dumps({"model": "model-a", "max_tokens": 2, "messages": [message]}).encode()
    headers = [(b"X-Tenant-ID", b"alice"), (b"X-Trace", b"t" * 50_000)]
    answer = exchange(stack.port, build(b"POST", CHAT.encode(), headers, body), "POST")
    assert answer.status == 200, answer
    assert json.loads(answer.body)["object"] == "chat.completion"


@pytest.mark.parametrize(
    "expect", [[b"100-continue"], [b"100-continue", b"100-continue"], [b"something-else"]]
)
def test_expect_headers_never_reach_the_engine(stack: Any, expect: list[bytes]) -> None:
    """Envoy answers a single `Expect: 100-continue` itself; others (found by the fuzz
    test: a repeated one) used to reach the engine, whose 417 was plain text."""
    message = {"role": "user", "content": "hi"}
    body = json.dumps({"model": "model-a", "max_tokens": 2, "messages": [message]}).encode()
    headers = [(b"X-Tenant-ID", b"alice")] + [(b"Expect", value) for value in expect]
    answer = exchange(stack.port, build(b"POST", CHAT.encode(), headers, body), "POST")
    assert answer.status == 200, answer
    assert json.loads(answer.body)["object"] == "chat.completion"


@pytest.mark.parametrize("path", [CHAT.encode(), b"/v1/realtime", b"/health"])
def test_a_websocket_upgrade_gets_a_clear_refusal(stack: Any, path: bytes) -> None:
    """Envoy refuses upgrades before routing, with a bare 403; the client gets a 400
    that says why, in OpenAI's shape."""
    headers = [
        (b"X-Tenant-ID", b"alice"),
        (b"Connection", b"Upgrade"),
        (b"Upgrade", b"websocket"),
        (b"Sec-WebSocket-Version", b"13"),
        (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
    ]
    answer = exchange(stack.port, build(b"GET", path, headers, b""), "GET")
    assert answer.status == 400, answer
    error = json.loads(answer.body)["error"]
    assert error["code"] == "upgrade_not_supported"
    assert error["message"].startswith("WebSocket and other protocol upgrades are not supported")


def alice_on_one_engine(**engine: Any) -> dict[str, Any]:
    """A policy: tenant alice, one fast simulator with these settings."""
    fast = {"kind": "sim", "preset": "tiny", "models": ["model-a"], **engine}
    return {"version": 1, "tenants": {"alice": {}}, "engines": {"fast": fast}}


# -- a burst past gRPC's own admission ------------------------------------------------------

BURST = 3000


async def test_a_burst_of_requests_gets_fairlanes_answers_not_dropped_calls(
    stack_factory: Any,
) -> None:
    """3,000 requests at once: each waits for a decision on its own ext_proc stream. Past
    1,000 streams the worker has not yet picked up, gRPC's defaults drop calls at random
    (503 `gateway_unavailable`); every request must get Fairlane's own answer instead."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 3 * BURST  # client sockets, Envoy's downstream ones, and the rest
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip(f"needs {need} open files, the hard limit is {hard}")
    # Before the stack starts, so that Envoy inherits it too.
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, need), hard))
    try:
        burst = stack_factory(
            alice_on_one_engine(max_inflight=8, queue={"max_per_tenant": 32, "timeout_s": 60})
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    body = {"model": "model-a", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}

    async def one(session: aiohttp.ClientSession) -> tuple[int, str]:
        async with session.post(
            burst.url + CHAT, json=body, headers={"x-tenant-id": "alice"}
        ) as resp:
            raw = await resp.read()
            return resp.status, "" if resp.status == 200 else json.loads(raw)["error"]["code"]

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        answers = await asyncio.gather(*(one(session) for _ in range(BURST)))
    counts: dict[tuple[int, str], int] = {}
    for answer in answers:
        counts[answer] = counts.get(answer, 0) + 1
    print(f"\nburst of {BURST}: {counts}")
    assert set(counts) <= {(200, ""), (429, "queue_full")}, counts
    assert counts[(200, "")] >= 40  # at least the 8 slots and 32 queued


# -- a body sent a byte at a time -------------------------------------------------------------


def test_a_request_trickled_in_is_cut_with_408(stack_factory: Any) -> None:
    """Each byte restarts the stream idle timeout, so only the request timeout stops a
    client that sends its body a byte at a time from holding its connection."""
    policy = alice_on_one_engine(queue={"timeout_s": 1})
    # Envoy's clock is request_timeout_s + the longest queue wait a reload could set
    # (below the idle timeout) + 5 s: 1 + 3 + 5 s here.
    policy["listener"] = {"request_timeout_s": 1, "stream_idle_timeout_s": 3}
    slow = stack_factory(policy)
    body = json.dumps(
        {"model": "model-a", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}
    ).encode()
    request = build(b"POST", CHAT.encode(), [(b"X-Tenant-ID", b"alice")], body)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", slow.port), timeout=30) as sock:
        sock.sendall(request[: -len(body)])  # the headers at once
        sock.settimeout(0.25)
        answer = b""
        for i in range(len(body)):  # ~20 s for the whole body, if nothing stopped it
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(body[i : i + 1])
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)
            if answer:
                break
    waited = time.monotonic() - start
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout"), answer
    assert json.loads(payload)["error"]["code"] == "request_timeout"
    assert 1 <= waited < 1 + 3 + 5 + 3, waited
    assert exchange(slow.port, request, "POST").status == 200  # sent at once: served


def test_a_connection_that_sends_nothing_is_closed(stack: Any) -> None:
    """Without a bound it was held for the idle timeout (300 s): 20,000 such sockets,
    Envoy's connection limit, would have kept every other client out for that long."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as sock:
        start = time.monotonic()
        assert sock.recv(1) == b""  # closed by Envoy, not by our timeout
        held = time.monotonic() - start
    assert 14 < held < 20, held
