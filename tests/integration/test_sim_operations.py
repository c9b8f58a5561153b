"""The simulator as a real process, off the happy path: request errors, /v1/models and
/health, metrics and priority, a client gone mid-stream, overload and SIGTERM, and a
taken announcement port.

One simulator serves most tests; the overload and announcement ones start their own.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fairlane.ports import free_port

from testkit.metrics import total
from testkit.sim_server import CHAT, MODEL, post, simulator, start_sim, stop_sim, wait_healthy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from simulator()


@pytest.mark.parametrize(
    ("path", "body", "status", "message"),
    [
        ("/v1/chat/completions", b"{not json", 400, "JSON decode error"),
        (
            "/v1/chat/completions",
            b'{"x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
            400,
            "JSON decode error: nested too deeply",
        ),
        ("/v1/chat/completions", {**CHAT, "model": "x"}, 404, "The model `x` does not exist."),
        ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
        ("/v1/completions", {"model": MODEL}, 400, "prompt"),
        (
            "/v1/completions",
            {"prompt": "x", "max_tokens": 0},
            400,
            "max_tokens must be an integer of at least 1, got 0",
        ),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "5x"}, 400, "at least 1, got '5x'"),
        (
            "/v1/completions",
            {"prompt": "x", "n": 0},
            400,
            "n must be an integer from 1 to 128, got 0",
        ),
        ("/v1/chat/completions", {**CHAT, "n": "2.5"}, 400, "from 1 to 128, got '2.5'"),
        ("/v1/chat/completions", {**CHAT, "n": 129}, 400, "from 1 to 128, got 129"),
        ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, 400, "a number of at least 0"),
        ("/v1/chat/completions", {**CHAT, "temperature": -1}, 400, "temperature must be"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, "top_p must be a number in (0, 1]"),
        ("/v1/completions", {"prompt": "x", "top_p": True}, 400, "top_p must be a number"),
        ("/v1/chat/completions", {**CHAT, "presence_penalty": 3}, 400, "in [-2, 2], got 3"),
        ("/v1/chat/completions", {**CHAT, "stop": [1]}, 400, "stop must be a string or a list"),
        ("/v1/chat/completions", {**CHAT, "seed": 1.5}, 400, "seed must be an integer"),
        (
            "/v1/chat/completions",
            {**CHAT, "top_logprobs": 2},
            400,
            "when using `top_logprobs`, `logprobs` must be set to true.",
        ),
        ("/v1/chat/completions", {**CHAT, "logprobs": "maybe"}, 400, "logprobs must be a boolean"),
        (
            "/v1/chat/completions",
            {**CHAT, "logprobs": True, "top_logprobs": 21},
            400,
            "Requested sample logprobs of 21, which is greater than max allowed: 20",
        ),
        ("/v1/completions", {"prompt": "x", "logprobs": -2}, 400, "a positive value or -1"),
        ("/v1/completions", {"prompt": "x", "logprobs": -1}, 400, "logprobs of 128256, which"),
        (
            "/v1/completions",
            {"prompt": "x" * 8000, "max_tokens": 100},
            400,
            "This model's maximum context length is 2048 tokens. However, you requested 2100",
        ),
    ],
)
async def test_errors(base_url: str, path: str, body: Any, status: int, message: str) -> None:
    got_status, resp = await post(base_url, path, body)
    assert got_status == status
    assert set(resp["error"]) == {"message", "type", "param", "code"}
    assert resp["error"]["code"] == status
    assert message in resp["error"]["message"]


async def test_valid_sampling_fields_are_accepted(base_url: str) -> None:
    body = {**CHAT, "temperature": 0, "top_p": 1, "presence_penalty": -2, "stop": ["\n"]}
    status, resp = await post(base_url, "/v1/chat/completions", {**body, "seed": 7})
    assert status == 200, resp
    assert resp["object"] == "chat.completion"


async def test_a_header_as_long_as_envoy_forwards_is_served(base_url: str) -> None:
    """Envoy forwards a header of up to 60 KiB; aiohttp's default stops at 8 KiB, with a
    plain-text 400 ("Got more than 8190 bytes when reading")."""
    headers = {"X-Trace": "t" * 50_000}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{base_url}/v1/chat/completions", json=CHAT, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["object"] == "chat.completion"


async def test_models_and_health(base_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{base_url}/v1/models") as resp:
            body = await resp.json()
        async with session.get(f"{base_url}/health") as resp:
            assert resp.status == 200
            assert await resp.read() == b""
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [
        (MODEL, "model", "fairlane-sim")
    ]


async def test_metrics_and_priority(base_url: str) -> None:
    before = await total(base_url + "/metrics", "vllm:request_success_total")
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{base_url}/v1/chat/completions", json={**CHAT, "max_tokens": 2, "priority": 3}
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["x-sim-priority"] == "3"
    async with aiohttp.ClientSession() as session, session.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:time_to_first_token_seconds_bucket",
        "vllm:e2e_request_latency_seconds_bucket",
        "vllm:prompt_tokens_total",
        "vllm:generation_tokens_total",
        "vllm:request_success_total",
    ):
        assert re.search(rf'^{name}{{.*model_name="{MODEL}"', text, re.MULTILINE), name
    assert await total(base_url + "/metrics", "vllm:request_success_total") == before + 1
    assert "fairlane_sim_priority_requests_total " in text


async def test_disconnect_mid_stream_frees_the_slot(base_url: str) -> None:
    body = {**CHAT, "max_tokens": 1500, "stream": True}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{base_url}/v1/chat/completions", json=body)
        for _ in range(3):
            await resp.content.readline()
        assert await total(base_url + "/metrics", "vllm:num_requests_running") == 1
        resp.close()  # drops the connection
    deadline = time.monotonic() + 5
    while await total(base_url + "/metrics", "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "aborted request still running"
        await asyncio.sleep(0.05)


async def test_overload_503_and_sigterm_with_requests_in_flight() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_sim(port, "--max-queue", "1", "--model", "a", "--model", "b")
    try:
        await asyncio.to_thread(wait_healthy, proc, base)
        body = {"model": "b", "prompt": "hi", "max_tokens": 1500}
        in_flight = [asyncio.create_task(post(base, "/v1/completions", body)) for _ in range(9)]
        deadline = time.monotonic() + 5
        # 8 running, 1 queued
        while await total(base + "/metrics", "vllm:num_requests_waiting") != 1:
            assert time.monotonic() < deadline, "queue did not fill"
            await asyncio.sleep(0.02)
        status, resp = await post(base, "/v1/completions", body)
        assert (status, resp["error"]["type"]) == (503, "ServiceUnavailableError")
        os.kill(proc.pid, signal.SIGTERM)
        for status, resp in await asyncio.gather(*in_flight):
            assert status == 503
            assert "engine stopped" in resp["error"]["message"]
        await asyncio.to_thread(proc.wait, 10)  # one SIGTERM is enough
    finally:
        code, stdout = await asyncio.to_thread(stop_sim, proc)
    assert code == 0
    assert stdout == f"fairlane-sim ready on {base} (preset tiny)\n"


async def test_a_taken_announcement_port_costs_only_the_announcements() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flags = ["--scheduling-policy", "priority", "--isolate-prefills", "--announcements"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))  # the same number, UDP: what --announcements binds
        proc = start_sim(port, *flags)
        try:
            await asyncio.to_thread(wait_healthy, proc, base)
            status, _ = await post(base, "/v1/completions", {"model": MODEL, "prompt": "hi"})
            assert status == 200
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            _, stderr = await asyncio.to_thread(proc.communicate, None, 10)
    assert f"not listening for Fairlane's announcements on UDP 127.0.0.1:{port}" in stderr
