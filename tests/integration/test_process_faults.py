"""Processes killed under a real `fairlane serve`: the worker, an engine and Envoy with
SIGKILL (mid-stream too), and `fairlane serve` itself with SIGTERM under load.

Every wait is bounded; every stack is stopped by PID and checked for surviving children
(conftest). Measured numbers (the gap during a worker restart, ...) are printed; run with
``-s`` to see them. docs/reliability.md records them.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from fairlane.bench.cpu import alive, running_descendants

from testkit.http import chat, error_of, post, read_stream, wait_healthy
from testkit.metrics import assert_at_rest, metric_is, total
from testkit.policies import faults_policy
from testkit.processes import ENVOY, WORKER, child_pid, sim, wait_for_new_pid
from testkit.waits import eventually

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any, fake: Any) -> Any:
    return stack_factory(faults_policy(fake))


# -- worker crash ------------------------------------------------------------------------


async def test_worker_crash_fails_closed_and_recovers(stack: Any) -> None:
    assert (await post(stack, chat("model-a")))[0] == 200
    envoy = child_pid(stack, ENVOY)
    worker = child_pid(stack, WORKER)
    # A stream admitted by the old worker is Envoy's and the engine's business now.
    started = asyncio.Event()
    long_stream = asyncio.create_task(
        read_stream(stack, chat("model-a", 300, stream=True), "alice", started)
    )
    async with asyncio.timeout(10):
        await started.wait()

    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    outcomes: list[tuple[float, int, dict[str, str], bytes]] = []
    ok_in_a_row = 0
    while ok_in_a_row < 3:
        assert time.monotonic() - killed_at < 30, f"no recovery: {outcomes[-3:]}"
        status, headers, body = await post(stack, chat("model-a", 2), tenant="carol")
        outcomes.append((time.monotonic() - killed_at, status, headers, body))
        ok_in_a_row = ok_in_a_row + 1 if status == 200 else 0
        await asyncio.sleep(0.02)

    refused = [o for o in outcomes if o[1] != 200]
    assert refused, "no request saw the gap: the kill went unnoticed"
    for _, status, headers, body in refused:
        assert status == 503, (status, body)
        assert headers["content-type"] == "application/json"
        assert error_of(body)["code"] == "gateway_unavailable"
        assert int(headers["retry-after"]) >= 1
    first_ok = next(o[0] for o in outcomes if o[1] == 200)
    print(f"\nworker restart gap: {first_ok:.2f}s, {len(refused)} requests got 503")

    new_worker = child_pid(stack, WORKER)
    assert new_worker != worker
    assert child_pid(stack, ENVOY) == envoy
    # No bypass (failure_mode_allow: false): every 200 carol got was admitted by the new
    # worker, whose counters began at zero when it started.
    served = sum(1 for o in outcomes if o[1] == 200)
    assert await eventually(
        lambda: metric_is(stack, served, "fairlane_requests_total", tenant="carol", outcome="ok"),
        5,
    ), "a 200 was served that the worker never admitted"

    survivor = await long_stream
    assert survivor.status == 200 and survivor.done, vars(survivor)
    assert survivor.chunks == 301
    await assert_at_rest(stack)


# -- engine crash ----------------------------------------------------------------------------


async def test_engine_crash_mid_stream_truncates_and_recovers(stack: Any) -> None:
    engine = child_pid(stack, sim("model-a"))
    started = asyncio.Event()
    stream = asyncio.create_task(
        read_stream(stack, chat("model-a", 2000, stream=True), "alice", started)
    )
    async with asyncio.timeout(10):
        await started.wait()

    os.kill(engine, signal.SIGKILL)
    killed_at = time.monotonic()
    # Probe while the stream is ending: the engine is down for about a second.
    outcomes: list[tuple[float, int, dict[str, str], bytes, float]] = []

    async def probe() -> None:
        ok_in_a_row = 0
        while ok_in_a_row < 3:
            assert time.monotonic() - killed_at < 30, f"no recovery: {outcomes[-3:]}"
            sent = time.monotonic()
            status, headers, body = await post(stack, chat("model-a", 2), tenant="bob")
            outcomes.append((sent - killed_at, status, headers, body, time.monotonic() - sent))
            ok_in_a_row = ok_in_a_row + 1 if status == 200 else 0
            await asyncio.sleep(0.02)

    async with asyncio.timeout(40):  # the stream ends, it does not hang
        result, _ = await asyncio.gather(stream, probe())
    print(f"\nstream ended {result.ended_at - killed_at:.2f}s after the engine died")
    assert result.ended_at - killed_at < 5
    assert result.status == 200
    assert 5 <= result.chunks < 2001
    assert not result.done
    # The chunked response is cut off without its terminating chunk; no SSE error event
    # is appended (the design: a client sees a truncated body, not a well-formed end).
    assert isinstance(result.exception, aiohttp.ClientPayloadError), result.exception
    assert result.error_events == []

    refused = [o for o in outcomes if o[1] != 200]
    assert refused, "no request saw the engine down"
    for _, status, headers, body, took in refused:
        assert status == 503, (status, body)
        assert headers["content-type"] == "application/json", body
        assert error_of(body)["code"] == "engine_unavailable"
        assert int(headers["retry-after"]) >= 1
        assert took < 2.0, "a refusal while the engine is down must come at once"
    first_ok = next(o[0] for o in outcomes if o[1] == 200)
    print(f"engine restart gap: {first_ok:.2f}s, {len(refused)} requests got 503")
    await wait_for_new_pid(stack, engine, sim("model-a"))
    await assert_at_rest(stack)


async def test_engine_crash_answers_waiting_requests_with_json_503(stack: Any) -> None:
    """Non-streaming requests inside the engine when it dies (no response byte sent yet)
    get the same OpenAI-style 503 + Retry-After as any other engine failure."""
    await wait_healthy(stack)
    engine = child_pid(stack, sim("model-a"))
    waiting = [asyncio.create_task(post(stack, chat("model-a", 400), tenant="bob")) for _ in (1, 2)]
    assert await eventually(lambda: metric_is(stack, 2, "fairlane_inflight", engine="big"), 5), (
        "the requests never reached the engine"
    )
    await asyncio.sleep(0.3)
    os.kill(engine, signal.SIGKILL)
    async with asyncio.timeout(10):
        results = await asyncio.gather(*waiting)
    print(f"\nrequests inside the engine when it died got: {results}")
    await wait_for_new_pid(stack, engine, sim("model-a"))
    await assert_at_rest(stack)
    for status, headers, body in results:
        assert status == 503, (status, body)
        assert headers["content-type"] == "application/json", (headers, body)
        assert error_of(body)["code"] == "engine_unavailable"
        assert int(headers.get("retry-after", "0")) >= 1, headers


# -- Envoy crash -------------------------------------------------------------------------------


async def test_envoy_restart_keeps_worker_counters(stack: Any) -> None:
    await wait_healthy(stack)
    assert (await post(stack, chat("model-a")))[0] == 200
    await assert_at_rest(stack)  # its end-of-request record has reached the worker
    before = await total(stack.control + "/metrics", "fairlane_requests_total")
    assert before > 0
    envoy = child_pid(stack, ENVOY)
    worker = child_pid(stack, WORKER)
    os.kill(envoy, signal.SIGKILL)
    killed_at = time.monotonic()
    await wait_for_new_pid(stack, envoy, ENVOY)
    await wait_healthy(stack)
    print(f"\nEnvoy back after {time.monotonic() - killed_at:.2f}s")
    assert child_pid(stack, WORKER) == worker
    assert await total(stack.url + "/metrics", "fairlane_requests_total") == before
    assert (await post(stack, chat("model-a")))[0] == 200
    assert await eventually(lambda: metric_is(stack, before + 1, "fairlane_requests_total"), 5), (
        "the request through the new Envoy was not counted by the same worker"
    )
    await assert_at_rest(stack)


async def test_an_envoy_that_keeps_exiting_stops_serve(stack_factory: Any, fake: Any) -> None:
    """Without Envoy nothing is served: after five exits `fairlane serve` says so and
    exits 1 (for its service manager to see), stopping the worker and the engines."""
    stack = stack_factory(faults_policy(fake))
    await wait_healthy(stack)
    children = list(running_descendants(stack.process.pid))
    envoy = child_pid(stack, ENVOY)
    os.kill(envoy, signal.SIGKILL)
    squatter = await take_port(stack.port, within_s=2)  # Envoy's restarts cannot bind it
    try:
        exit_code = await asyncio.to_thread(stack.process.wait, 60)
    finally:
        squatter.close()
    serve_log = Path(stack.log.name).read_text()
    assert exit_code == 1, serve_log[-2000:]
    assert "fairlane: envoy keeps exiting; giving up (see " in serve_log, serve_log[-2000:]
    deadline = time.monotonic() + 5
    while (survivors := [p for p in children if alive(p)]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert not survivors, f"children of serve outlived it: {survivors}"


async def take_port(port: int, within_s: float) -> socket.socket:
    """Listen on ``port`` as soon as its killed owner's socket is gone."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            return socket.create_server(("127.0.0.1", port))
        except OSError:
            assert time.monotonic() < deadline, f"port {port} stayed taken"
            await asyncio.sleep(0.005)


# -- SIGTERM -----------------------------------------------------------------------------------


async def test_sigterm_drains_in_flight_streams_and_refuses_new_ones(
    stack_factory: Any, fake: Any
) -> None:
    policy = faults_policy(fake)
    policy["listener"] = {"drain_grace_s": 10}
    stack = stack_factory(policy)
    children = list(running_descendants(stack.process.pid))
    events = [asyncio.Event() for _ in range(3)]
    streams = [
        asyncio.create_task(read_stream(stack, chat("model-a", 600, stream=True), "alice", e))
        for e in events
    ]
    async with asyncio.timeout(10):
        await asyncio.gather(*(e.wait() for e in events))

    stack.process.send_signal(signal.SIGTERM)
    term_at = time.monotonic()
    await asyncio.sleep(1.0)  # the supervisor reacts within its 0.5 s loop
    probes: list[str] = []
    while not all(s.done() for s in streams) and time.monotonic() - term_at < 15:
        try:
            status, _, body = await post(stack, chat("model-a", 2), tenant="bob")
            probes.append(f"{status} {body[:80]!r}")
        except aiohttp.ClientConnectionError as exc:
            probes.append(f"refused ({type(exc).__name__})")
        await asyncio.sleep(0.2)
    results = await asyncio.gather(*streams)

    for result in results:
        assert result.status == 200 and result.done and result.chunks == 601, vars(result)
        assert result.ended_at - term_at < 10
    try:
        code = await asyncio.to_thread(stack.process.wait, 30)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, "fairlane serve did not exit after the drain"
    print(f"\nserve exited {time.monotonic() - term_at:.2f}s after SIGTERM; probes: {probes}")
    assert probes, "the streams ended before any new connection was tried"
    assert all(not p.startswith("200") for p in probes), f"served during the drain: {probes}"
    assert all(p.startswith(("refused", "503")) for p in probes), probes

    async def all_gone() -> bool:
        return not any(alive(p) for p in children)

    await eventually(all_gone, 10)
    assert [p for p in children if alive(p)] == [], "children outlived `fairlane serve`"
