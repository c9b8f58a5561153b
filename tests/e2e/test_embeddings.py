"""Embeddings, and vLLM's other pooling APIs (rerank, score, pooling), through Fairlane
from a real vLLM serving the tiny Llama as an embedding model (`--runner pooling
--convert embed`), started by hand as a user would."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from testkit.metrics import charged, charged_since

MODEL = "tiny-llama"


@pytest.fixture(scope="module")
def vllm(external_vllm_factory: Any) -> Any:
    engine = external_vllm_factory("--runner", "pooling", "--convert", "embed")
    print(f"\nexternal vLLM (pooling) healthy after {engine.start_s:.1f}s")
    return engine


@pytest.fixture(scope="module")
def stack(stack_factory: Any, vllm: Any) -> Any:
    policy = {
        "version": 1,
        "tenants": {"alice": {}},
        "engines": {
            "embed": {"kind": "external", "url": vllm.url, "models": [MODEL], "max_inflight": 8}
        },
    }
    stack = stack_factory(policy, healthy=False)
    stack.wait_healthy(timeout_s=60)
    return stack


async def test_embeddings_are_served_and_their_prompts_charged(stack: Any) -> None:
    """The unmodified SDK (base64 by default, decoded by it); the engine's usage is
    what the tenant is charged, prompt tokens only."""
    import openai  # vLLM's dependency

    before = await charged(stack, "alice", MODEL)
    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )
    inputs = ["Once upon a time", "there was a tiny model", "that embedded text"]
    reply = await asyncio.to_thread(client.embeddings.create, model=MODEL, input=inputs)
    assert [item.index for item in reply.data] == [0, 1, 2]
    dims = {len(item.embedding) for item in reply.data}
    assert len(dims) == 1 and dims.pop() > 0
    assert await charged_since(stack, "alice", MODEL, before) == (reply.usage.prompt_tokens, 0)


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/rerank", {"query": "Once", "documents": ["upon a time", "there was", "a model"]}),
        ("/v2/rerank", {"query": "Once", "documents": ["upon a time", "there was"], "top_n": 1}),
        ("/v1/score", {"text_1": "Once", "text_2": ["upon a time", "there was"]}),
        ("/pooling", {"input": ["upon a time", "there was"]}),
    ],
)
async def test_vllms_other_pooling_apis_are_served_and_their_prompts_charged(
    stack: Any, path: str, body: dict[str, Any]
) -> None:
    """vLLM scores and reranks with an embedding model too (cosine similarity): the
    engine's prompt_tokens are charged, and a rerank's documents echoed in its answer
    are not taken for generated text."""
    before = await charged(stack, "alice", MODEL)
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url + path, json={"model": MODEL, **body}, headers={"x-tenant-id": "alice"}
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()
        reply = await resp.json()
    assert reply.get("results") or reply.get("data")
    prompt = reply["usage"]["prompt_tokens"]
    assert prompt > 0
    assert await charged_since(stack, "alice", MODEL, before) == (prompt, 0)
