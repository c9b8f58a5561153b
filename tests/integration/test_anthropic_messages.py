"""Anthropic's Messages API (`POST /v1/messages`, which vLLM serves) through the real
Envoy and worker to the simulator, called by the unmodified `anthropic` SDK: the same
tenant decision as a chat, the usage charged from Anthropic's counts, and every error
Fairlane or Envoy answers in Anthropic's shape (tests/e2e runs it against a real vLLM)."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import anthropic  # a dev dependency: no silent skip without it
import pytest
from multidict import CIMultiDict

from fairlane.engines.priority_levels import priority_level
from fairlane.ports import free_port

from testkit.metrics import charged, charged_since

pytestmark = pytest.mark.integration

MESSAGES = "/v1/messages"
MODEL = "model-m"
MAX_BODY = 64 * 1024


def _policy() -> dict[str, Any]:
    return {
        "version": 1,
        "listener": {"max_body_bytes": MAX_BODY},
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
                "models": [MODEL],
                "port": free_port(),
                "inject_priority": True,
                "linger_s": 0,  # each test's tenant alone in the pool
            },
        },
    }


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(_policy())


def sdk(stack: Any, tenant: str = "alice") -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=stack.url,
        api_key="unused",
        default_headers={"X-Tenant-ID": tenant},
        max_retries=0,
    )


def message(max_tokens: int = 4, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": "hi"}],
        **extra,
    }


async def post(
    stack: Any, body: Any, tenant: str = "alice", path: str = MESSAGES
) -> tuple[int, CIMultiDict[str], bytes]:
    headers = {"content-type": "application/json", "x-tenant-id": tenant}
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, CIMultiDict(resp.headers), await resp.read()


def anthropic_error(body: bytes) -> dict[str, Any]:
    """The error object of an Anthropic-shaped error body (and nothing else in it)."""
    document = json.loads(body)
    assert set(document) == {"type", "error"} and document["type"] == "error", document
    error: dict[str, Any] = document["error"]
    assert set(error) == {"type", "message"}, error
    return error


def test_the_anthropic_sdk_creates_and_streams_messages(stack: Any) -> None:
    client = sdk(stack)
    reply = client.messages.create(
        model=MODEL,
        max_tokens=5,
        system="Be brief.",
        messages=[{"role": "user", "content": "Say hi"}],
    )
    assert reply.content[0].type == "text" and reply.content[0].text == " tok" * 5
    assert reply.stop_reason == "max_tokens"
    assert reply.usage.output_tokens == 5 and reply.usage.input_tokens > 0
    # The beta client adds `?beta=true` to the path, as Claude Code's requests do.
    with client.beta.messages.stream(
        model=MODEL, max_tokens=4, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert texts == [" tok"] * 4
    assert final.usage.output_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
async def test_anthropics_usage_is_charged_to_the_tenant(stack: Any, stream: bool) -> None:
    """Read from the message, or from the stream's `message_delta`: input_tokens and
    output_tokens."""
    before = await charged(stack, "bob", MODEL)
    body = message(9, stream=stream)
    body["messages"][0]["content"] = "word " * 400
    status, _, reply = await post(stack, body, tenant="bob")
    assert status == 200, reply
    if stream:
        last = reply.split(b"event: message_delta\ndata: ")[1].split(b"\n")[0]
        usage = json.loads(last)["usage"]
    else:
        usage = json.loads(reply)["usage"]
    assert usage["output_tokens"] == 9 and usage["input_tokens"] > 400
    assert await charged_since(stack, "bob", MODEL, before) == (
        usage["input_tokens"],
        usage["output_tokens"],
    )


async def test_a_stream_left_early_keeps_its_estimate(stack: Any) -> None:
    """`message_start` says `output_tokens: 0`; a client that reads part of a long
    answer and hangs up before `message_delta` is charged its admission estimate, not
    that zero."""
    before = await charged(stack, "alice", MODEL)
    read = 0
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url + MESSAGES,
            json=message(2000, stream=True),
            headers={"x-tenant-id": "alice"},
        ) as resp,
    ):
        assert resp.status == 200
        async for line in resp.content:
            read += line.startswith(b"event: content_block_delta")
            if read == 40:
                break
    _, completion = await charged_since(stack, "alice", MODEL, before)
    assert completion == 2000


async def test_the_engine_gets_the_tenants_priority(stack: Any) -> None:
    """Its class (interactive 0-1, batch 2-3), not the body's own `priority`."""
    for tenant, rank in (("alice", 0), ("bob", 1)):
        status, headers, reply = await post(stack, message(2, priority=-50), tenant=tenant)
        assert status == 200, reply
        assert priority_level(int(headers["x-sim-priority"])) // 2 == rank


def test_over_the_rate_limit_the_sdk_raises_rate_limit_error(stack: Any) -> None:
    """A burst of 1,000 tokens: an answer of up to 900 in progress leaves no room for
    300 more. Anthropic's 429, with the Retry-After its SDK waits by."""
    client = sdk(stack, "metered")
    with (
        client.messages.stream(**message(900)) as held,
        pytest.raises(anthropic.RateLimitError) as info,
    ):
        next(iter(held))  # admitted: its estimate is in the bucket
        client.messages.create(**message(300))
    assert info.value.body == {
        "type": "error",
        "error": {"type": "rate_limit_error", "message": "tenant 'metered' is over its rate limit"},
    }
    assert int(info.value.response.headers["retry-after"]) >= 1


def test_an_unknown_model_is_the_sdks_not_found_error(stack: Any) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        sdk(stack).messages.create(**{**message(), "model": "nope"})
    assert "`nope` does not exist" in str(info.value)


@pytest.mark.parametrize(
    ("body", "status", "error_type", "text"),
    [
        (b"{not json", 400, "invalid_request_error", "request body is not valid JSON"),
        ({"max_tokens": 4, "messages": []}, 400, "invalid_request_error", "a string `model`"),
        ({**message(), "model": 7}, 400, "invalid_request_error", "`model` must be a string"),
        ({**message(), "model": "nope"}, 404, "not_found_error", "`nope` does not exist"),
        # Envoy's own reply, past the listener's body limit.
        (
            message(content="x" * MAX_BODY),
            413,
            "request_too_large",
            "request body exceeds the 0.0625 MiB limit",
        ),
    ],
)
async def test_fairlanes_refusals_take_anthropics_shape(
    stack: Any, body: Any, status: int, error_type: str, text: str
) -> None:
    got, headers, reply = await post(stack, body)
    assert got == status, reply
    assert headers["content-type"] == "application/json"
    error = anthropic_error(reply)
    assert error["type"] == error_type and text in error["message"]


@pytest.mark.parametrize(
    ("model", "said"),
    [
        (None, "request body must be a JSON object with a string `model`"),
        ([MODEL], "request body must be a JSON object with a string `model`"),
        (7, "`model` must be a string"),
    ],
)
async def test_a_model_that_is_not_a_string_is_refused_as_one(
    stack: Any, model: Any, said: str
) -> None:
    got, _, reply = await post(stack, {**message(), "model": model})
    assert got == 400, reply
    assert anthropic_error(reply) == {"type": "invalid_request_error", "message": said}


async def test_the_engines_own_refusal_passes_through(stack: Any) -> None:
    status, _, reply = await post(stack, message(0))
    assert status == 400, reply
    assert "max_tokens" in json.loads(reply)["error"]["message"]


async def test_other_methods_and_paths_of_the_api_are_refused_in_its_shape(stack: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + MESSAGES) as resp:
            assert resp.status == 405
            assert anthropic_error(await resp.read()) == {
                "type": "invalid_request_error",
                "message": "use POST for /v1/messages",
            }
        async with session.post(stack.url + MESSAGES + "/batches", json=message()) as resp:
            assert resp.status == 404
            error = anthropic_error(await resp.read())
            assert error["type"] == "not_found_error"
            assert "POST /v1/messages," in error["message"]
        # The OpenAI paths keep OpenAI's shape.
        async with session.get(stack.url + "/v1/chat/completions") as resp:
            assert json.loads(await resp.read())["error"]["code"] == "method_not_allowed"


async def test_a_refusal_before_envoy_reads_the_path_keeps_openais_shape(stack: Any) -> None:
    """A 70 KB header is past Envoy's 60 KiB limit: its codec refuses the request
    before there is a path to choose a shape by."""
    headers = {"x-tenant-id": "t" * 70_000}
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + MESSAGES, json=message(), headers=headers) as resp,
    ):
        assert resp.status == 431
        error = json.loads(await resp.read())["error"]
    assert (error["code"], error["type"]) == ("bad_request", "invalid_request_error")
