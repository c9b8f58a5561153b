"""Admission and accounting through the real Envoy, worker and simulator engines: queue
timeouts and limits, a slot per sequence until the client leaves, the tokens charged to
a tenant (usage, estimates, refunds) and the priority injected for priority engines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, HELLO, chat, error_of, post
from testkit.metrics import assert_at_rest, metric
from testkit.policies import MAX_BODY, data_path_policy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(data_path_policy())


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    for start in range(0, len(data), 1000):
        yield data[start : start + 1000]


async def test_chunked_upload_is_limited_and_estimated_by_its_size(stack: Any) -> None:
    big = chat("model-a")
    big["messages"][0]["content"] = "x" * (MAX_BODY + 10)
    headers = {"x-tenant-id": "alice", "content-type": "application/json"}
    async with aiohttp.ClientSession() as session:
        data = _chunked(json.dumps(big).encode())
        async with session.post(stack.url + CHAT, data=data, headers=headers) as resp:
            assert resp.status == 413
            assert error_of(await resp.read())["code"] == "body_too_large"
        # ~4,000 prompt tokens sent without a content-length, while the answer streams:
        # the token bucket must already hold them (not just the 400 of max_tokens), or
        # the next request gets in.
        prompt = chat("model-a", max_tokens=400, stream=True)
        prompt["messages"][0]["content"] = "x" * 16000
        headers["x-tenant-id"] = "metered"
        data = _chunked(json.dumps(prompt).encode())
        async with session.post(stack.url + CHAT, data=data, headers=headers) as streaming:
            assert streaming.status == 200
            await streaming.content.readline()
            status, _, body = await post(stack, chat("model-a", max_tokens=1), tenant="metered")
            assert status == 429, body
            assert error_of(body)["code"] == "rate_limit_exceeded"


async def test_a_request_the_engine_refuses_costs_nothing(stack: Any) -> None:
    """Refused by the engine (a sampling value vLLM refuses), a ~600-token prompt is
    not served: the tenant's 1,000-token burst gets it back, and no tokens are counted."""
    labels = {"tenant": "refused", "model": "model-a", "kind": "prompt"}
    body = chat("model-a", max_tokens=1, temperature=-1)
    body["messages"][0]["content"] = "x" * 2400
    for _ in range(4):  # 2,400 tokens estimated in all: the burst would not hold them
        status, _, answer = await post(stack, body, tenant="refused")
        assert status == 400, answer
        assert "temperature" in error_of(answer)["message"]
        await assert_at_rest(stack)  # the end-of-request record that refunds it has come
    assert await metric(stack, "fairlane_tokens_total", **labels) == 0
    status, _, answer = await post(stack, chat("model-a", max_tokens=1), tenant="refused")
    assert status == 200, answer


async def test_queue_timeout_is_503_with_retry_after(stack: Any) -> None:
    hold = asyncio.create_task(post(stack, chat("model-one", max_tokens=400), tenant="alice"))
    await asyncio.sleep(0.3)  # the one slot is taken
    status, headers, body = await post(stack, chat("model-one", max_tokens=2), tenant="bob")
    assert status == 503
    assert int(headers["retry-after"]) >= 1
    assert error_of(body)["code"] == "queue_timeout"
    assert (await hold)[0] == 200


async def test_queue_full_is_429(stack: Any) -> None:
    hold = asyncio.create_task(post(stack, chat("model-one", max_tokens=300), tenant="alice"))
    await asyncio.sleep(0.3)
    waiting = asyncio.create_task(post(stack, chat("model-one", max_tokens=2), tenant="bob"))
    await asyncio.sleep(0.2)
    status, headers, body = await post(stack, chat("model-one", max_tokens=2), tenant="bob")
    assert status == 429
    assert "retry-after" in headers
    assert error_of(body)["code"] == "queue_full"
    await hold
    await waiting


@pytest.mark.parametrize(
    ("path", "fields", "slots"),
    [
        # `n` choices are `n` sequences in the engine's batch: as many slots.
        (CHAT, {"messages": HELLO}, 1),
        (CHAT, {"messages": HELLO, "n": 3}, 3),
        # Read as vLLM reads it: a text of a number is that number, "yes" is true.
        (CHAT, {"messages": HELLO, "n": " 3 ", "stream": "yes"}, 3),
        # A batch of prompts runs as one sequence per prompt and choice (prompts.lua).
        ("/v1/completions", {"prompt": ["a [x]", "b", "c"], "n": 2}, 6),
        ("/v1/completions", {"prompt": [[1, 2], [3]]}, 2),
        ("/v1/completions", {"prompt": [1, 2, 3]}, 1),  # one prompt, as token ids
        # Chat has no `prompt`: a list there is not counted (the filter is off).
        (CHAT, {"messages": HELLO, "prompt": ["a", "b"]}, 1),
    ],
)
async def test_a_stream_holds_a_slot_per_sequence_until_the_client_leaves(
    stack: Any, path: str, fields: dict[str, Any], slots: int
) -> None:
    body = {"model": "model-a", "max_tokens": 2000, "stream": True, **fields}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, json=body, headers={"x-tenant-id": "alice"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        await resp.content.readline()
        assert await metric(stack, "fairlane_inflight", engine="big") == slots
    # The client closed the connection mid-stream.
    deadline = time.monotonic() + 5
    while await metric(stack, "fairlane_inflight", engine="big") != 0:
        assert time.monotonic() < deadline, "the slots were not given back"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("path", "fields", "status"),
    [
        # `big` has 64 slots, 8 of them kept for light tenants: 56 for one request.
        (CHAT, {"messages": HELLO, "n": 56}, 200),
        (CHAT, {"messages": HELLO, "n": 57}, 400),
        ("/v1/completions", {"prompt": ["a"] * 8, "n": 8}, 400),
        # A pooling batch's items are single passes: served, however many.
        ("/v1/embeddings", {"input": ["a"] * 100}, 200),
    ],
)
async def test_a_generation_wider_than_one_tenant_may_fill_is_refused(
    stack: Any, path: str, fields: dict[str, Any], status: int
) -> None:
    body = {"model": "model-a", "max_tokens": 1, **fields}
    got, _, reply = await post(stack, body, tenant="carol", path=path)
    assert got == status, reply
    if status == 400:
        error = error_of(reply)
        assert error["code"] == "too_many_sequences"
        assert "takes at most 56 of one request here" in error["message"]
    await assert_at_rest(stack)


async def test_each_of_n_choices_is_charged(stack: Any) -> None:
    labels = {"tenant": "bob", "model": "model-b", "kind": "completion"}
    before = await metric(stack, "fairlane_tokens_total", **labels)
    status, _, body = await post(stack, chat("model-b", max_tokens=4, n=3), tenant="bob")
    assert status == 200
    assert [c["index"] for c in json.loads(body)["choices"]] == [0, 1, 2]
    deadline = time.monotonic() + 5  # the end-of-request record comes after the response
    while (charged := await metric(stack, "fairlane_tokens_total", **labels) - before) == 0:
        assert time.monotonic() < deadline, "no usage charged"
        await asyncio.sleep(0.05)
    assert charged == 12


async def test_disconnect_while_queued_leaves_queue(stack: Any) -> None:
    hold = asyncio.create_task(post(stack, chat("model-one", max_tokens=200), tenant="alice"))
    await asyncio.sleep(0.3)
    queued = asyncio.create_task(post(stack, chat("model-one", max_tokens=2), tenant="bob"))
    await asyncio.sleep(0.2)
    assert await metric(stack, "fairlane_queue_depth", engine="one", tenant="bob") == 1
    queued.cancel()
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if await metric(stack, "fairlane_queue_depth", engine="one", tenant="bob") == 0:
            break
        await asyncio.sleep(0.05)
    assert await metric(stack, "fairlane_queue_depth", engine="one", tenant="bob") == 0
    await hold


@pytest.mark.parametrize(
    ("extra", "choices"),
    [
        ({}, 1),  # counted from the content chunks
        ({"stream_options": {"include_usage": True}}, 1),
        # vLLM's running counts: each chunk its choice's, the last chunk the total.
        ({"n": 2, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}, 2),
    ],
)
async def test_usage_is_charged_to_the_tenant(
    stack: Any, extra: dict[str, Any], choices: int
) -> None:
    before = await metric(
        stack, "fairlane_tokens_total", tenant="bob", model="model-b", kind="completion"
    )
    body = chat("model-b", max_tokens=7, stream=True, **extra)
    status, _, _ = await post(stack, body, tenant="bob")
    assert status == 200
    deadline = time.monotonic() + 3
    after = before
    while time.monotonic() < deadline and after == before:
        await asyncio.sleep(0.05)
        after = await metric(
            stack, "fairlane_tokens_total", tenant="bob", model="model-b", kind="completion"
        )
    assert after - before == 7 * choices


IMAGE = "data:image/png;base64," + "iVBORw0KGgo" * 3600  # ~40 KB of base64


@pytest.mark.parametrize(
    ("part", "estimate"),
    [
        # An image, inline or linked: cost.media_tokens (1,024), not 40 KB / 4
        # chars a token (or the ~10 of a link).
        ({"type": "image_url", "image_url": {"url": IMAGE}}, (1024, 1100)),
        ({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}, (1024, 1100)),
        # The same bytes as text are text: the engine tokenizes them.
        ({"type": "text", "text": IMAGE}, (9900, 10200)),
    ],
)
async def test_an_image_is_estimated_per_image_not_per_byte(
    stack: Any, part: dict[str, Any], estimate: tuple[int, int]
) -> None:
    """A stream without usage is charged the admission estimate of its prompt."""
    labels = {"tenant": "alice", "model": "model-b", "kind": "prompt"}
    before = await metric(stack, "fairlane_tokens_total", **labels)
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, part]}]
    body = chat("model-b", max_tokens=2, stream=True, messages=messages)
    status, _, _ = await post(stack, body)
    assert status == 200
    deadline, charged = time.monotonic() + 3, 0.0
    while time.monotonic() < deadline and not charged:
        await asyncio.sleep(0.05)
        charged = await metric(stack, "fairlane_tokens_total", **labels) - before
    assert estimate[0] <= charged <= estimate[1]


@pytest.mark.parametrize(("model", "how"), [("model-p", "header"), ("model-q", "body")])
@pytest.mark.parametrize(("tenant", "priority"), [("alice", "10000"), ("bob", "30000")])
async def test_priority_injected_for_priority_engines(
    stack: Any, model: str, how: str, tenant: str, priority: str
) -> None:
    """Level: class rank x 2, + 1 while over its share or alone in the pool (as here, so
    that a tenant arriving next goes first): interactive 1, batch 3; times 10,000, plus
    the slots the tenant holds (none here). Managed vLLM and sim engines get it as
    X-Vllm-Priority, others in the body (a second round trip)."""
    await assert_at_rest(stack)  # alone: earlier tests' end records have come
    body = chat(model, max_tokens=2, priority=-50)  # a client's own priority never counts
    body["messages"][0]["content"] = "long " * 3000  # the body mutation must fix the length
    forged = {"x-vllm-priority": "-100"}
    status, headers, reply = await post(stack, body, tenant=tenant, headers=forged)
    assert status == 200, reply
    assert headers["x-sim-priority"] == priority
    assert headers["x-sim-priority-from"] == how
    # Engines without inject_priority get the body untouched.
    status, headers, _ = await post(stack, chat("model-b", max_tokens=2), tenant=tenant)
    assert status == 200
    assert "x-sim-priority" not in headers
