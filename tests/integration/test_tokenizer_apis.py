"""vLLM's tokenizer endpoints (`/tokenize`, `/detokenize`) and the Messages API's
`/v1/messages/count_tokens` through the real Envoy and worker to the simulator: routed
to the model's engine like any request, but outside its batch, so they neither wait for
nor take a slot, and cost no tokens; the tenant's request rate still counts them
(tests/e2e runs them against a real vLLM)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import anthropic  # a dev dependency: no silent skip without it
import pytest

from fairlane.ports import free_port

from testkit.metrics import metric

pytestmark = pytest.mark.integration

MODEL = "model-t"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "tenants": {
                "alice": {},
                "bob": {},
                # A burst of two requests.
                "limited": {"limits": {"requests_per_minute": 12, "burst_seconds": 10}},
            },
            "engines": {
                "sim": {
                    "kind": "sim",
                    "preset": "h100-8b",
                    "models": [MODEL],
                    "port": free_port(),
                    "max_inflight": 1,
                    "headroom": 0,
                    "linger_s": 0,
                }
            },
        }
    )


def test_served_as_vllm_and_anthropics_sdk_ask(stack: Any) -> None:
    client = anthropic.Anthropic(
        base_url=stack.url, api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )
    counted = client.messages.count_tokens(
        model=MODEL, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert counted.input_tokens > 0


async def requests_counted(stack: Any, tenant: str, outcome: str) -> float:
    return await metric(
        stack, "fairlane_requests_total", model=MODEL, outcome=outcome, tenant=tenant
    )


async def test_tokenize_and_detokenize(stack: Any) -> None:
    before = (
        await requests_counted(stack, "bob", "ok"),
        await requests_counted(stack, "bob", "error"),
    )
    status, reply = await stack.post_json(
        "/tokenize", {"model": MODEL, "prompt": "hello there"}, "bob"
    )
    assert status == 200, reply
    assert reply["count"] == len(reply["tokens"]) > 0
    status, chat = await stack.post_json("/tokenize", CHAT, "bob")
    assert status == 200 and chat["count"] > 0, chat
    status, back = await stack.post_json(
        "/detokenize", {"model": MODEL, "tokens": reply["tokens"]}, "bob"
    )
    assert status == 200 and isinstance(back["prompt"], str), back
    status, _ = await stack.post_json("/tokenize", {"model": MODEL}, "bob")  # the engine's 400
    assert status == 400
    # Counted in fairlane_requests_total like any request, by how they ended.
    deadline = time.monotonic() + 5
    while (
        await requests_counted(stack, "bob", "ok") - before[0],
        await requests_counted(stack, "bob", "error") - before[1],
    ) != (3, 1):
        assert time.monotonic() < deadline, await stack.metrics()
        await asyncio.sleep(0.1)


async def test_no_slot_is_taken_or_waited_for_and_nothing_charged(stack: Any) -> None:
    """The engine's one slot is bob's, a chat from alice would queue behind it: her
    tokenizer calls go through at once, and her token counts do not move."""
    long = {**CHAT, "max_tokens": 3000, "stream": True}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + "/v1/chat/completions", json=long, headers={"x-tenant-id": "bob"})
        as held,
    ):  # fmt: skip
        assert held.status == 200
        await held.content.readline()
        assert 'fairlane_inflight{engine="sim"} 1.0' in await stack.metrics()
        for path, body in (
            ("/tokenize", {"model": MODEL, "prompt": "x" * 4000}),
            ("/detokenize", {"model": MODEL, "tokens": [1, 2]}),
            ("/v1/messages/count_tokens", CHAT),
        ):
            start = time.monotonic()
            status, reply = await stack.post_json(path, body)
            assert status == 200, (path, reply)
            assert time.monotonic() - start < 2, path  # bob's answer takes ~30 s
        text = await stack.metrics()
        assert 'fairlane_inflight{engine="sim"} 1.0' in text
    await asyncio.sleep(0.5)  # any end-of-request record has come
    assert 'tenant="alice"' not in "".join(
        line for line in (await stack.metrics()).splitlines() if "fairlane_tokens_total" in line
    )


async def test_the_request_rate_limit_counts_them(stack: Any) -> None:
    body = {"model": MODEL, "prompt": "hello"}
    for _ in range(2):
        status, reply = await stack.post_json("/tokenize", body, tenant="limited")
        assert status == 200, reply
    status, reply = await stack.post_json("/tokenize", body, tenant="limited")
    assert status == 429 and reply["error"]["code"] == "rate_limit_exceeded", reply


@pytest.mark.parametrize(
    ("path", "body", "status", "error"),
    [
        ("/tokenize", {"model": "nope", "prompt": "x"}, 404, {"code": "model_not_found"}),
        ("/detokenize", {"tokens": [1]}, 400, {"code": "missing_model"}),
        ("/v1/messages/count_tokens", {**CHAT, "model": "nope"}, 404, {"type": "not_found_error"}),
        # The engine's own refusal passes through.
        ("/tokenize", {"model": MODEL}, 400, {"code": 400}),
    ],
)  # fmt: skip
async def test_bad_requests_get_each_apis_errors(
    stack: Any, path: str, body: dict[str, Any], status: int, error: dict[str, Any]
) -> None:
    got, reply = await stack.post_json(path, body)
    assert got == status, reply
    assert error.items() <= reply["error"].items()
    async with aiohttp.ClientSession() as session, session.get(stack.url + path) as resp:
        assert resp.status == 405
