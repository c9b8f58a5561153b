"""The stream idle timeout of a real `fairlane serve`: a long stream that keeps sending
is not cut, an engine that never answers gets a 504, and one that stalls mid-stream is
cut short.

Every wait is bounded; every stack is stopped by PID and checked for surviving children
(conftest).
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, build, chat, error_of, post, read_stream
from testkit.metrics import assert_at_rest
from testkit.policies import faults_policy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def idle_stack(stack_factory: Any, fake_engine_factory: Any) -> Any:
    policy = faults_policy(fake_engine_factory())
    policy["listener"] = {"stream_idle_timeout_s": 2}
    for engine in policy["engines"].values():  # a queue wait must fit in the idle timeout
        engine["queue"] = {"timeout_s": 1}
    return stack_factory(policy)


async def test_long_stream_is_not_cut_by_idle_timeout(idle_stack: Any) -> None:
    start = time.monotonic()
    result = await read_stream(idle_stack, chat("model-a", 450, stream=True), "alice")
    took = time.monotonic() - start
    assert result.status == 200 and result.done, vars(result)
    assert result.chunks == 451
    assert took > 2.5, "the stream must outlast the 2 s idle timeout for this test to mean much"


async def test_stalled_engine_gets_504(idle_stack: Any) -> None:
    start = time.monotonic()
    status, headers, body = await post(idle_stack, chat("fake-stall"))
    took = time.monotonic() - start
    assert status == 504
    assert headers["content-type"] == "application/json"
    assert error_of(body)["code"] == "stream_idle_timeout"
    assert 1.5 < took < 10
    await assert_at_rest(idle_stack)


def test_a_client_that_stops_sending_its_body_gets_504(idle_stack: Any) -> None:
    """Headers and most of the body, then silence: the idle timeout ends it (Envoy has
    one timer for both directions; the message names both causes)."""
    body = json.dumps(chat("model-a")).encode()
    request = build(b"POST", CHAT.encode(), [(b"X-Tenant-ID", b"alice")], body)
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", idle_stack.port), timeout=15) as sock:
        sock.sendall(request[:-10])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    took = time.monotonic() - start
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 504"), answer
    assert error_of(payload) == {
        "message": "nothing moved for longer than the stream idle timeout: the engine sent "
        "no answer, or the client stopped sending its body",
        "type": "timeout",
        "param": None,
        "code": "stream_idle_timeout",
    }
    assert 1.5 < took < 10


async def test_engine_stalling_mid_stream_is_cut(idle_stack: Any) -> None:
    start = time.monotonic()
    result = await read_stream(idle_stack, chat("fake-stall-mid", stream=True), "alice")
    took = time.monotonic() - start
    print(f"\nstalled stream cut after {took:.2f}s")
    # The 200 headers were already sent: the stream can only be cut short.
    assert result.status == 200 and result.chunks == 1 and not result.done
    assert isinstance(result.exception, aiohttp.ClientPayloadError)
    assert 1.5 < took < 10
    await assert_at_rest(idle_stack)
