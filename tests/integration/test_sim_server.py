"""The simulator as a real process: OpenAI shapes, streaming, errors, metrics, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fairlane.ports import free_port

pytestmark = pytest.mark.integration

MODEL = "sim-model"


def _start(port: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-P", "-m", "fairlane.engines.sim", "--preset", "tiny"]
    return subprocess.Popen(
        [*cmd, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _wait_healthy(proc: subprocess.Popen[str], base: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"simulator exited: {proc.communicate()[1]}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError("simulator did not become healthy")


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM (SIGKILL if it hangs) by PID; the exit code and stdout."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stdout, _ = proc.communicate(timeout=5)
    return proc.returncode, stdout


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    port = free_port()
    proc = _start(port)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_healthy(proc, base)
        yield base
    finally:
        _stop(proc)


async def _post(base: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(base + path, data=data) as resp:
        return resp.status, await resp.json(content_type=None)


async def _stream(base: str, path: str, body: dict[str, Any]) -> list[tuple[float, str]]:
    """(arrival time, payload) of every SSE event."""
    events: list[tuple[float, str]] = []
    async with aiohttp.ClientSession() as session, session.post(base + path, json=body) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append((time.monotonic(), line[6:].decode().strip()))
    return events


async def _metric(base: str, name: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    match = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there, simulator!"}]}


async def test_chat_non_streaming(base_url: str) -> None:
    status, body = await _post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 7})
    assert status == 200
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == " tok" * 7
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 7
    assert usage["total_tokens"] == usage["prompt_tokens"] + 7


async def test_completions_non_streaming_and_batch(base_url: str) -> None:
    body = {"model": MODEL, "prompt": "x" * 400, "max_tokens": 3}
    status, resp = await _post(base_url, "/v1/completions", body)
    assert status == 200
    assert resp["object"] == "text_completion"
    assert resp["choices"][0]["text"] == " tok tok tok"
    assert resp["usage"] == {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103}
    status, resp = await _post(base_url, "/v1/completions", {**body, "prompt": ["a" * 8, "b"]})
    assert status == 200
    assert [c["index"] for c in resp["choices"]] == [0, 1]
    assert resp["usage"]["completion_tokens"] == 6


async def test_n_choices_are_one_sequence_each(base_url: str) -> None:
    status, resp = await _post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 2, "n": 3})
    assert status == 200
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert resp["usage"]["completion_tokens"] == 6
    body = {"model": MODEL, "prompt": ["x" * 40, "y" * 80], "max_tokens": 2, "n": 2}
    status, resp = await _post(base_url, "/v1/completions", body)
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2, 3]
    # The prompt is counted once per prompt, as vLLM does, whatever n is.
    assert resp["usage"] == {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
    events = await _stream(base_url, "/v1/completions", {**body, "stream": True})
    chunks = [json.loads(p) for _, p in events[:-1]]
    assert sorted({c["choices"][0]["index"] for c in chunks}) == [0, 1, 2, 3]
    assert len(chunks) == 8


async def test_chat_stream_shapes(base_url: str) -> None:
    body = {**CHAT, "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}}
    events = await _stream(base_url, "/v1/chat/completions", body)
    payloads = [p for _, p in events]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    content = chunks[1:-1]
    assert len(content) == 5  # one chunk per token
    assert all(c["choices"][0]["delta"] == {"content": " tok"} for c in content)
    assert [c["choices"][0]["finish_reason"] for c in content] == [None] * 4 + ["length"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 5


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_continuous_usage_stats_put_a_running_count_on_every_chunk(
    base_url: str, path: str
) -> None:
    """vLLM's extension: each chunk carries its choice's count; the last chunk the total."""
    request = CHAT if path.endswith("chat/completions") else {"model": MODEL, "prompt": "hi"}
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {**request, "max_tokens": 3, "n": 2, "stream": True, "stream_options": options}
    chunks = [json.loads(p) for _, p in (await _stream(base_url, path, body))[:-1]]
    per_choice: dict[int, list[int]] = {}
    for chunk in chunks[:-1]:
        per_choice.setdefault(chunk["choices"][0]["index"], []).append(
            chunk["usage"]["completion_tokens"]
        )
    role = [0] if path.endswith("chat/completions") else []
    assert per_choice == {0: [*role, 1, 2, 3], 1: [*role, 1, 2, 3]}
    prompt = chunks[0]["usage"]["prompt_tokens"]
    assert chunks[-1]["usage"] == {
        "prompt_tokens": prompt,
        "completion_tokens": 6,
        "total_tokens": prompt + 6,
    }
    # Without include_usage the option is ignored, as in vLLM.
    body["stream_options"] = {"continuous_usage_stats": True}
    chunks = [json.loads(p) for _, p in (await _stream(base_url, path, body))[:-1]]
    assert not any("usage" in c for c in chunks)


async def test_completion_stream_usage_only_when_asked(base_url: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 4, "stream": True}
    payloads = [p for _, p in await _stream(base_url, "/v1/completions", body)]
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(p) for p in payloads[:-1]]
    assert len(chunks) == 4
    assert all(c["object"] == "text_completion" and "usage" not in c for c in chunks)
    assert [c["choices"][0]["text"] for c in chunks] == [" tok"] * 4
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


async def test_chat_logprobs_when_asked(base_url: str) -> None:
    status, resp = await _post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 3})
    assert resp["choices"][0]["logprobs"] is None
    body = {**CHAT, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    status, resp = await _post(base_url, "/v1/chat/completions", body)
    assert status == 200, resp
    content = resp["choices"][0]["logprobs"]["content"]
    assert [entry["token"] for entry in content] == [" tok"] * 3
    entry = content[0]
    assert entry["bytes"] == list(b" tok") and entry["logprob"] < 0
    runners_up = entry["top_logprobs"]
    assert [t["token"] for t in runners_up] == [" tok", " the"]
    assert runners_up[0]["logprob"] == entry["logprob"] > runners_up[1]["logprob"]
    # Streamed: none on the role chunk, the token's own on each token chunk; `logprobs`
    # alone lists no runners-up.
    body = {**CHAT, "max_tokens": 2, "logprobs": True, "stream": True}
    chunks = [
        json.loads(p) for _, p in (await _stream(base_url, "/v1/chat/completions", body))[:-1]
    ]
    logprobs = [c["choices"][0]["logprobs"] for c in chunks]
    assert logprobs[0] is None
    assert [lp["content"] for lp in logprobs[1:]] == [[{**entry, "top_logprobs": []}]] * 2


async def test_completion_logprobs_carry_text_offsets(base_url: str) -> None:
    body = {"model": MODEL, "prompt": "hi", "max_tokens": 3, "logprobs": 3}
    status, resp = await _post(base_url, "/v1/completions", body)
    assert status == 200, resp
    logprobs = resp["choices"][0]["logprobs"]
    assert logprobs["tokens"] == [" tok"] * 3
    assert logprobs["text_offset"] == [0, 4, 8]
    assert len(logprobs["token_logprobs"]) == 3
    assert list(logprobs["top_logprobs"][0]) == [" tok", " the", " a"]
    # Streamed, each choice's offsets run on from its own text; logprobs 0 still lists
    # the sampled token, as vLLM does.
    body = {**body, "logprobs": 0, "n": 2, "stream": True}
    chunks = [json.loads(p) for _, p in (await _stream(base_url, "/v1/completions", body))[:-1]]
    offsets: dict[int, list[int]] = {}
    for chunk in chunks:
        choice = chunk["choices"][0]
        offsets.setdefault(choice["index"], []).extend(choice["logprobs"]["text_offset"])
        assert choice["logprobs"]["top_logprobs"] == [{" tok": logprobs["token_logprobs"][0]}]
    assert offsets == {0: [0, 4, 8], 1: [0, 4, 8]}


async def test_streaming_is_incremental(base_url: str) -> None:
    body = {**CHAT, "max_tokens": 50, "stream": True}
    events = await _stream(base_url, "/v1/chat/completions", body)
    first, last = events[0][0], events[-1][0]
    # 49 decode steps of at least the tiny preset's 4 ms base each.
    assert last - first > 0.15


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
        ("/v1/chat/completions", {**CHAT, "max_tokens": "5"}, 400, "at least 1, got '5'"),
        (
            "/v1/completions",
            {"prompt": "x", "n": 0},
            400,
            "n must be an integer from 1 to 128, got 0",
        ),
        ("/v1/chat/completions", {**CHAT, "n": "2"}, 400, "from 1 to 128, got '2'"),
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
        ("/v1/chat/completions", {**CHAT, "logprobs": "yes"}, 400, "logprobs must be a boolean"),
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
    got_status, resp = await _post(base_url, path, body)
    assert got_status == status
    assert set(resp["error"]) == {"message", "type", "param", "code"}
    assert resp["error"]["code"] == status
    assert message in resp["error"]["message"]


async def test_valid_sampling_fields_are_accepted(base_url: str) -> None:
    body = {**CHAT, "temperature": 0, "top_p": 1, "presence_penalty": -2, "stop": ["\n"]}
    status, resp = await _post(base_url, "/v1/chat/completions", {**body, "seed": 7})
    assert status == 200, resp
    assert resp["object"] == "chat.completion"


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
    before = await _metric(base_url, "vllm:request_success_total")
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
    assert await _metric(base_url, "vllm:request_success_total") == before + 1
    assert "fairlane_sim_priority_requests_total " in text


async def test_disconnect_mid_stream_frees_the_slot(base_url: str) -> None:
    body = {**CHAT, "max_tokens": 1500, "stream": True}
    async with aiohttp.ClientSession() as session:
        resp = await session.post(f"{base_url}/v1/chat/completions", json=body)
        for _ in range(3):
            await resp.content.readline()
        assert await _metric(base_url, "vllm:num_requests_running") == 1
        resp.close()  # drops the connection
    deadline = time.monotonic() + 5
    while await _metric(base_url, "vllm:num_requests_running") != 0:
        assert time.monotonic() < deadline, "aborted request still running"
        await asyncio.sleep(0.05)


async def test_openai_sdk_streams(base_url: str) -> None:
    openai = pytest.importorskip("openai")
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused")
    try:
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            usage = chunk.usage or usage
        assert text == " tok" * 6
        assert usage is not None and usage.completion_tokens == 6
        done = await client.completions.create(model=MODEL, prompt="hi", max_tokens=2)
        assert done.choices[0].text == " tok tok"
        chat = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=2,
            logprobs=True,
            top_logprobs=3,
        )
        assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
        assert [t.token for t in chat.choices[0].logprobs.content[1].top_logprobs] == [
            " tok",
            " the",
            " a",
        ]
    finally:
        await client.close()


async def test_overload_503_and_sigterm_with_requests_in_flight() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = _start(port, "--max-queue", "1", "--model", "a", "--model", "b")
    try:
        await asyncio.to_thread(_wait_healthy, proc, base)
        body = {"model": "b", "prompt": "hi", "max_tokens": 1500}
        in_flight = [asyncio.create_task(_post(base, "/v1/completions", body)) for _ in range(9)]
        deadline = time.monotonic() + 5
        while await _metric(base, "vllm:num_requests_waiting") != 1:  # 8 running, 1 queued
            assert time.monotonic() < deadline, "queue did not fill"
            await asyncio.sleep(0.02)
        status, resp = await _post(base, "/v1/completions", body)
        assert (status, resp["error"]["type"]) == (503, "ServiceUnavailableError")
        os.kill(proc.pid, signal.SIGTERM)
        for status, resp in await asyncio.gather(*in_flight):
            assert status == 503
            assert "engine stopped" in resp["error"]["message"]
        await asyncio.to_thread(proc.wait, 10)  # one SIGTERM is enough
    finally:
        code, stdout = await asyncio.to_thread(_stop, proc)
    assert code == 0
    assert stdout == f"fairlane-sim ready on {base} (preset tiny)\n"


async def test_a_taken_announcement_port_costs_only_the_announcements() -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    flags = ["--scheduling-policy", "priority", "--isolate-prefills", "--announcements"]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", port))  # the same number, UDP: what --announcements binds
        proc = _start(port, *flags)
        try:
            await asyncio.to_thread(_wait_healthy, proc, base)
            status, _ = await _post(base, "/v1/completions", {"model": MODEL, "prompt": "hi"})
            assert status == 200
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            _, stderr = await asyncio.to_thread(proc.communicate, None, 10)
    assert f"not listening for Fairlane's announcements on UDP 127.0.0.1:{port}" in stderr
