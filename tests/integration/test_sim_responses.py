"""The simulator as a real process, answering well-formed requests: OpenAI shapes,
batches and n choices, streaming and its usage, logprobs, and the OpenAI SDK.

One simulator serves the module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from testkit.sim_server import CHAT, MODEL, post, simulator

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    yield from simulator()


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


async def test_chat_non_streaming(base_url: str) -> None:
    status, body = await post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 7})
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
    status, resp = await post(base_url, "/v1/completions", body)
    assert status == 200
    assert resp["object"] == "text_completion"
    assert resp["choices"][0]["text"] == " tok tok tok"
    assert resp["usage"] == {"prompt_tokens": 100, "completion_tokens": 3, "total_tokens": 103}
    status, resp = await post(base_url, "/v1/completions", {**body, "prompt": ["a" * 8, "b"]})
    assert status == 200
    assert [c["index"] for c in resp["choices"]] == [0, 1]
    assert resp["usage"]["completion_tokens"] == 6


async def test_n_choices_are_one_sequence_each(base_url: str) -> None:
    status, resp = await post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 2, "n": 3})
    assert status == 200
    assert [c["index"] for c in resp["choices"]] == [0, 1, 2]
    assert resp["usage"]["completion_tokens"] == 6
    body = {"model": MODEL, "prompt": ["x" * 40, "y" * 80], "max_tokens": 2, "n": 2}
    status, resp = await post(base_url, "/v1/completions", body)
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
    status, resp = await post(base_url, "/v1/chat/completions", {**CHAT, "max_tokens": 3})
    assert resp["choices"][0]["logprobs"] is None
    body = {**CHAT, "max_tokens": 3, "logprobs": True, "top_logprobs": 2}
    status, resp = await post(base_url, "/v1/chat/completions", body)
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
    status, resp = await post(base_url, "/v1/completions", body)
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
