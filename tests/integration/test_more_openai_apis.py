"""OpenAI's Responses API (`POST /v1/responses`) and embeddings (`POST /v1/embeddings`)
through the real Envoy and worker to the simulator, which answers them as vLLM 0.32 does
(tests/e2e runs the Responses API against a real vLLM)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from fairlane.ports import free_port

from testkit.metrics import assert_at_rest, charged, charged_since, metric

pytestmark = pytest.mark.integration

RESPONSES = "/v1/responses"
UNSUPPORTED, BACKGROUND = "unsupported_parameter", "`background` responses are not served here"
EMBEDDINGS = "/v1/embeddings"
PORT = free_port()


def _policy() -> dict[str, Any]:
    return {
        "version": 1,
        "tenants": {
            "alice": {},
            "bob": {"priority": "batch"},
            # A burst of 1,000 tokens.
            "metered": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
        },
        "engines": {
            "sim": {
                "kind": "sim",
                "preset": "h100-8b",
                "models": ["model-r"],
                "port": PORT,
                "args": ["--model", "model-x"],
                "inject_priority": True,
                "linger_s": 0,  # each test's tenant alone in the pool
            },
            # The same simulator as an external engine: the priority goes in the body.
            "external": {
                "kind": "external",
                "url": f"http://127.0.0.1:{PORT}",
                "models": ["model-x"],
                "inject_priority": True,
                "linger_s": 0,
            },
        },
    }


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(_policy())


async def post(
    stack: Any, body: Any, tenant: str = "alice", path: str = RESPONSES
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", "x-tenant-id": tenant}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, dict(resp.headers), await resp.read()


def sdk(stack: Any, tenant: str = "alice") -> Any:
    openai = pytest.importorskip("openai")
    return openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", default_headers={"X-Tenant-ID": tenant}
    )


def test_the_openai_sdk_creates_and_streams_responses(stack: Any) -> None:
    openai = pytest.importorskip("openai")
    client = sdk(stack)
    reply = client.responses.create(
        model="model-r", input="Say hi", instructions="Be brief.", max_output_tokens=5
    )
    assert reply.output_text == " tok" * 5
    assert reply.usage is not None and reply.usage.output_tokens == 5
    items = [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}]
    with client.responses.stream(model="model-r", input=items, max_output_tokens=4) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == [" tok"] * 4
    assert final.usage is not None and final.usage.output_tokens == 4
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="nope", input="x")
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("stream", [False, True])
async def test_the_engines_usage_is_charged_to_the_tenant(stack: Any, stream: bool) -> None:
    """Read from the response object, or from the stream's `response.completed` event:
    `input_tokens`/`output_tokens`, not chat's names."""
    before = await charged(stack, "bob", "model-r")
    body = {"model": "model-r", "input": "word " * 400, "max_output_tokens": 9, "stream": stream}
    status, _, reply = await post(stack, body, tenant="bob")
    assert status == 200, reply
    if stream:
        completed = reply.split(b"event: response.completed\ndata: ")[1]
        usage = json.loads(completed)["response"]["usage"]
    else:
        usage = json.loads(reply)["usage"]
    assert await charged_since(stack, "bob", "model-r", before) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )
    assert usage["output_tokens"] == 9


async def hang_up_after_first_bytes(stack: Any, path: str, body: dict[str, Any]) -> None:
    """A stream the client leaves at once: its admission estimate stays charged."""
    headers = {"x-tenant-id": "metered"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, json=body, headers=headers) as resp,
    ):
        assert resp.status == 200
        await resp.content.readany()
    await assert_at_rest(stack)  # Envoy's record of the end has reached the worker


async def test_admission_reads_max_output_tokens(stack: Any) -> None:
    """The token bucket (a burst of 1,000) is charged the estimate, from each API's own
    field: a chat's `max_output_tokens` limits nothing and costs nothing; a response's
    2,000 do not fit the bucket's ~700 left, whatever `max_tokens` says there."""
    chat = {
        "model": "model-r",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 300,
        "max_output_tokens": 5000,
        "stream": True,
    }
    await hang_up_after_first_bytes(stack, "/v1/chat/completions", chat)
    small = {"model": "model-r", "input": "hi", "max_output_tokens": 2}
    status, _, reply = await post(stack, small, tenant="metered")
    assert status == 200, reply
    large = {"model": "model-r", "input": "hi", "max_output_tokens": 2000, "max_tokens": 1}
    status, _, reply = await post(stack, large, tenant="metered")
    assert status == 429, reply
    assert json.loads(reply)["error"]["code"] == "rate_limit_exceeded"


@pytest.mark.parametrize(("model", "how"), [("model-r", "header"), ("model-x", "body")])
@pytest.mark.parametrize(("tenant", "priority"), [("alice", "10000"), ("bob", "30000")])
async def test_the_engine_gets_the_tenants_priority(
    stack: Any, model: str, how: str, tenant: str, priority: str
) -> None:
    # Alone in the pool (a tenant alone goes at its level's heavy half), once the
    # earlier tests' requests have ended: their end records reach the worker after the
    # response, later on a loaded machine.
    await assert_at_rest(stack)
    body = {"model": model, "input": "hi", "max_output_tokens": 2, "priority": -50}
    status, headers, reply = await post(stack, body, tenant=tenant)
    assert status == 200, reply
    assert (headers["x-sim-priority"], headers["x-sim-priority-from"]) == (priority, how)


@pytest.mark.parametrize(
    ("body", "status", "code", "message"),
    [
        (b"{not json", 400, "invalid_json", "request body is not valid JSON"),
        ({"input": "hi"}, 400, "missing_model", "request body must be a JSON object"),
        ({"model": "nope", "input": "hi"}, 404, "model_not_found", "`nope` does not exist"),
        # The engine would answer at once and generate afterwards, outside the queue.
        ({"model": "model-r", "input": "hi", "background": True}, 400, UNSUPPORTED, BACKGROUND),
        ({"model": "model-r", "input": "hi", "background": "1"}, 400, UNSUPPORTED, BACKGROUND),
        # A key sent twice: Envoy, as vLLM's parser, reads the last.
        (
            b'{"model":"model-r","input":"hi","background":false,"background":true}',
            400,
            UNSUPPORTED,
            BACKGROUND,
        ),
        # The engine's own refusals pass through with its status.
        ({"model": "model-r", "input": "hi", "max_output_tokens": 0}, 400, 400, "max_output"),
        ({"model": "model-r", "max_output_tokens": 3}, 400, 400, "input: Field required"),
    ],
)
async def test_bad_requests_get_openai_errors(
    stack: Any, body: Any, status: int, code: Any, message: str
) -> None:
    got, _, reply = await post(stack, body)
    assert got == status, reply
    error = json.loads(reply)["error"]
    assert error["code"] == code
    assert message in error["message"]


async def test_a_background_flag_that_reads_false_is_served(stack: Any) -> None:
    for body in (
        b'{"model":"model-r","input":"hi","max_output_tokens":2,"background":false}',
        b'{"model":"model-r","input":"hi","max_output_tokens":2,"background":null}',
        b'{"model":"model-r","input":"hi","max_output_tokens":2,"background":true,"background":0}',
    ):
        status, _, reply = await post(stack, body)
        assert status == 200, (body, reply)


async def test_other_methods_are_refused(stack: Any) -> None:
    async with aiohttp.ClientSession() as session, session.get(stack.url + RESPONSES) as resp:
        assert resp.status == 405
        error = json.loads(await resp.read())["error"]
    assert (error["code"], error["message"]) == ("method_not_allowed", f"use POST for {RESPONSES}")


# -- /v1/embeddings ----------------------------------------------------------------------


def test_the_openai_sdk_gets_embeddings(stack: Any) -> None:
    """The SDK asks for base64 unless told otherwise, and decodes it."""
    client = sdk(stack)
    for encoding in ("float", None):
        extra = {"encoding_format": encoding} if encoding else {}
        reply = client.embeddings.create(model="model-r", input=["one", "two", "three"], **extra)
        assert [item.index for item in reply.data] == [0, 1, 2]
        assert all(len(item.embedding) == 16 for item in reply.data), encoding
        assert reply.usage.prompt_tokens > 0
    # vLLM's chat form: one sequence from the messages.
    chat = {"model": "model-r", "messages": [{"role": "user", "content": "hi"}]}
    reply = client.post("/embeddings", body=chat, cast_to=object)
    assert len(reply["data"]) == 1 and reply["usage"]["prompt_tokens"] > 0


async def test_an_embeddings_batch_is_charged_its_prompts_and_holds_a_slot_each(
    stack: Any,
) -> None:
    """Five inputs of ~3,000 tokens: a second or so of prefill, five sequences in the
    engine's batch (envoy/prompts.lua counts the `input` list), and no completion."""
    before = await charged(stack, "bob", "model-r")
    inputs = [f"text number {i} " * 900 for i in range(5)]
    body = {"model": "model-r", "input": inputs}
    request = asyncio.create_task(post(stack, body, "bob", EMBEDDINGS))
    held = 0.0
    while not request.done():
        held = max(held, await metric(stack, "fairlane_inflight", engine="sim"))
        await asyncio.sleep(0.02)
    status, _, reply = await request
    assert status == 200, reply
    assert held == 5
    usage = json.loads(reply)["usage"]
    # The completion count does not move: wait for the prompt's instead.
    assert await charged_since(stack, "bob", "model-r", before) == (usage["prompt_tokens"], 0)


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"model": "model-r"}, 400, "input: Field required"),
        ({"model": "model-r", "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
        ({"model": "nope", "input": "x"}, "model_not_found", "`nope` does not exist"),
    ],
)
async def test_bad_embeddings_requests_get_openai_errors(
    stack: Any, body: dict[str, Any], code: Any, message: str
) -> None:
    status, _, reply = await post(stack, body, path=EMBEDDINGS)
    assert status == (404 if code == "model_not_found" else 400), reply
    error = json.loads(reply)["error"]
    assert error["code"] == code
    assert message in error["message"]
