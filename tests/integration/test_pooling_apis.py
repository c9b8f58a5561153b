"""vLLM's pooling APIs besides embeddings (a cross-encoder's rerank and score, a
classifier's classify, raw pooling) through the real Envoy and worker to the simulator,
which answers them as vLLM 0.32 does: each input, document or pair is a sequence with a
slot of its own, the prompt is charged and nothing else (tests/e2e runs rerank and score
against a real vLLM)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from fairlane.engines.priority_levels import priority_level
from fairlane.ports import free_port

from testkit.metrics import charged, charged_since, metric

pytestmark = pytest.mark.integration

MODEL = "model-p"
# Each path with a body of three sequences.
THREE = [
    ("/rerank", {"query": "which one", "documents": ["first", "second", "third"]}),
    ("/v1/rerank", {"query": "which one", "documents": ["first", "second", "third"]}),
    ("/v2/rerank", {"query": "which one", "documents": ["first", "second", "third"]}),
    ("/score", {"text_1": "which one", "text_2": ["first", "second", "third"]}),
    ("/v1/score", {"text_1": ["a", "b", "c"], "text_2": ["first", "second", "third"]}),
    ("/classify", {"input": ["first", "second", "third"]}),
    ("/pooling", {"input": ["first", "second", "third"]}),
]


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "tenants": {"alice": {}, "bob": {}},
            "engines": {
                "sim": {
                    "kind": "sim",
                    "preset": "h100-8b",
                    "models": [MODEL],
                    "port": free_port(),
                    "linger_s": 0,
                }
            },
        }
    )


@pytest.mark.parametrize(("path", "body"), THREE, ids=[path for path, _ in THREE])
async def test_served_and_charged_its_prompt_only(
    stack: Any, path: str, body: dict[str, Any]
) -> None:
    """The engine's `prompt_tokens`, and no completion: a rerank's answer holds its
    documents' text, which is not generated."""
    before = await charged(stack, "bob", MODEL)
    status, reply = await stack.post_json(path, {"model": MODEL, **body}, tenant="bob")
    assert status == 200, reply
    assert len(reply.get("results", reply.get("data", []))) == 3
    assert reply["usage"]["prompt_tokens"] > 0
    assert await charged_since(stack, "bob", MODEL, before) == (reply["usage"]["prompt_tokens"], 0)


@pytest.mark.parametrize("path", ["/v1/rerank", "/v1/score"])
async def test_each_pair_holds_a_slot(stack: Any, path: str) -> None:
    """Five long documents: five sequences in the engine's batch for a second or so of
    prefill (envoy/prompts.lua counts the `documents` or `text_2` list)."""
    documents = [f"document number {i} " * 900 for i in range(5)]
    side = "documents" if "rerank" in path else "text_2"
    first = "query" if "rerank" in path else "text_1"
    body = {"model": MODEL, first: "which one", side: documents}
    request = asyncio.create_task(stack.post_json(path, body))
    held = 0.0
    while not request.done():
        held = max(held, await metric(stack, "fairlane_inflight", engine="sim"))
        await asyncio.sleep(0.02)
    status, reply = await request
    assert status == 200, reply
    assert held == 5


@pytest.mark.parametrize(
    ("path", "body", "status", "code", "message"),
    [
        ("/v1/rerank", {"model": "nope", "query": "q", "documents": ["a"]}, 404,
         "model_not_found", "`nope` does not exist"),
        ("/v1/rerank", {"query": "q", "documents": ["a"]}, 400, "missing_model", "`model`"),
        # The engine's own refusals pass through with its status.
        ("/v1/rerank", {"model": MODEL, "query": "q"}, 400, 400, "documents"),
        ("/score", {"model": MODEL, "text_1": ["a", "b"], "text_2": ["c", "d", "e"]}, 400,
         400, "one item or as many"),
        ("/classify", {"model": MODEL}, 400, 400, "input"),
    ],
)  # fmt: skip
async def test_bad_requests_get_openai_errors(
    stack: Any, path: str, body: dict[str, Any], status: int, code: Any, message: str
) -> None:
    got, reply = await stack.post_json(path, body)
    assert got == status, reply
    assert reply["error"]["code"] == code and message in reply["error"]["message"]


async def test_other_methods_are_refused(stack: Any) -> None:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/v1/rerank") as resp:
        assert resp.status == 405
        error = json.loads(await resp.read())["error"]
    assert (error["code"], error["message"]) == ("method_not_allowed", "use POST for /v1/rerank")


async def test_a_batch_wider_than_its_tenants_share_is_not_light(stack_factory: Any) -> None:
    """The engine priority through Envoy to the simulator (echoed as x-sim-priority):
    beside another active tenant, a batch whose items past its first reach its tenant's
    share (4 of 8 slots) gets the level after the light one, so a light request goes
    before its waiting items in the engine's queue; a narrower batch is light."""
    engine = {"kind": "sim", "preset": "h100-8b", "models": [MODEL], "max_inflight": 8}
    engine |= {"inject_priority": True, "pacing": 0, "port": free_port()}
    stack = stack_factory(
        {"version": 1, "tenants": {"alice": {}, "bob": {}}, "engines": {"e": engine}}
    )
    chat = {"model": MODEL, "max_tokens": 2000, "stream": True}
    chat["messages"] = [{"role": "user", "content": "hi"}]
    async with aiohttp.ClientSession() as session:

        async def level(path: str, body: dict[str, Any], tenant: str) -> int:
            headers = {"x-tenant-id": tenant}
            async with session.post(stack.url + path, json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                return priority_level(int(resp.headers["x-sim-priority"]))

        # alice holds a slot: bob is not alone, and his share is 4 of the 8.
        async with session.post(stack.url + "/v1/chat/completions", json=chat,
                                headers={"x-tenant-id": "alice"}) as held:  # fmt: skip
            assert held.status == 200
            narrow = await level("/v1/embeddings", {"model": MODEL, "input": ["a"] * 4}, "bob")
            deadline = time.monotonic() + 5  # its slots come back with its access log
            while await metric(stack, "fairlane_inflight", engine="e") != 1:
                assert time.monotonic() < deadline, "bob's slots were not given back"
                await asyncio.sleep(0.02)
            wide = await level("/v1/embeddings", {"model": MODEL, "input": ["a"] * 5}, "bob")
    assert (narrow, wide) == (0, 1)
