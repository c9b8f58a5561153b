"""The request path through the real Envoy, the real worker and real simulator engines:
routing by model, streaming, /health and /v1/models, HTTP/1.0 and the OpenAI SDK as
clients, and OpenAI-style errors for bad requests."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest

from testkit.http import CHAT, chat, error_of, post
from testkit.metrics import metric
from testkit.policies import MAX_BODY, data_path_policy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(data_path_policy())


async def test_chat_and_completions_non_streaming(stack: Any) -> None:
    status, _, body = await post(stack, chat("model-a", max_tokens=5))
    assert status == 200
    reply = json.loads(body)
    assert reply["model"] == "model-a"
    assert reply["usage"]["completion_tokens"] == 5
    status, _, body = await post(
        stack, {"model": "model-b", "prompt": "Once", "max_tokens": 3}, path="/v1/completions"
    )
    assert status == 200
    assert json.loads(body)["object"] == "text_completion"


async def test_two_models_route_to_their_engines(stack: Any) -> None:
    for model in ("model-a", "model-b"):
        status, _, body = await post(stack, chat(model, max_tokens=2))
        assert status == 200
        assert json.loads(body)["model"] == model


async def test_stream_chunks_arrive_as_produced(stack: Any) -> None:
    arrivals: list[float] = []
    start = time.monotonic()
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            stack.url + CHAT,
            json=chat("model-a", max_tokens=60, stream=True),
            headers={"x-tenant-id": "alice"},
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        async for line in resp.content:
            if line.startswith(b"data: {"):
                arrivals.append(time.monotonic() - start)
            if line.startswith(b"data: [DONE]"):
                break
    assert len(arrivals) >= 60
    # ~60 decode steps of ≥7 ms: the first chunk must not wait for the last.
    assert arrivals[0] < arrivals[-1] - 0.25, (arrivals[0], arrivals[-1])


async def test_usage_chunk_only_when_client_asks(stack: Any) -> None:
    async def usage_chunks(extra: dict[str, Any]) -> int:
        status, _, body = await post(stack, chat("model-b", max_tokens=3, stream=True, **extra))
        assert status == 200
        return sum(
            1 for line in body.split(b"\n") if b'"usage"' in line and b'"choices":[]' in line
        )

    assert await usage_chunks({}) == 0
    assert await usage_chunks({"stream_options": {"include_usage": True}}) == 1


@pytest.mark.parametrize(
    ("raw", "status", "code", "fragment"),
    [
        (b"{not json", 400, "invalid_json", "not valid JSON"),
        (b'{"messages": []}', 400, "missing_model", "`model`"),
        (b'{"model": 7}', 400, "invalid_model", "must be a string"),
        (b'{"model": "nope", "messages": []}', 404, "model_not_found", "`nope` does not exist"),
        (b"", 400, "missing_model", "`model`"),
    ],
)
async def test_bad_bodies_get_openai_errors(
    stack: Any, raw: bytes, status: int, code: str, fragment: str
) -> None:
    got, headers, body = await post(stack, None, raw=raw)
    assert got == status
    assert headers["content-type"] == "application/json"
    error = error_of(body)
    assert error["code"] == code
    assert fragment in error["message"]


MISSING_MODEL = "request body must be a JSON object with a string `model`"
NOT_A_STRING = "`model` must be a string"


@pytest.mark.parametrize(
    ("path", "raw", "code", "message"),
    [
        # json_to_metadata lifts none of these: read as missing, the message covers them.
        (CHAT, b'{"model": null, "messages": []}', "missing_model", MISSING_MODEL),
        (CHAT, b'{"model": ["model-a"], "messages": []}', "missing_model", MISSING_MODEL),
        ("/tokenize", b'{"prompt": "x", "model": {"id": 1}}', "missing_model", MISSING_MODEL),
        (CHAT, b'{"model": true, "messages": []}', "invalid_model", NOT_A_STRING),
        (CHAT, b'{"model": 7, "messages": []}', "invalid_model", NOT_A_STRING),
    ],
)
async def test_a_model_that_is_not_a_string_is_refused(
    stack: Any, path: str, raw: bytes, code: str, message: str
) -> None:
    got, _, body = await post(stack, None, path=path, raw=raw)
    assert got == 400
    error = error_of(body)
    assert (error["code"], error["message"]) == (code, message)


async def test_oversize_body_is_413(stack: Any) -> None:
    big = chat("model-a")
    big["messages"][0]["content"] = "x" * (MAX_BODY + 10)
    status, _, body = await post(stack, big)
    assert status == 413
    error = error_of(body)
    assert error["code"] == "body_too_large"
    assert "MiB limit" in error["message"]


async def test_long_prompt_under_limit_is_served(stack: Any) -> None:
    body = chat("model-a", max_tokens=2)
    body["messages"][0]["content"] = "word " * 8000  # 40 KB: many TCP reads, one decision
    status, _, _ = await post(stack, body)
    assert status == 200


async def test_missing_and_invalid_tenant_header(stack: Any) -> None:
    status, _, body = await post(stack, chat("model-a"), tenant=None)
    assert status == 400
    assert error_of(body)["code"] == "missing_tenant"
    status, _, body = await post(stack, chat("model-a"), tenant="bad tenant!")
    assert status == 400
    assert error_of(body)["code"] == "invalid_tenant"


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_error_keeps_engine_status(stack: Any, stream: bool) -> None:
    # More tokens than the engine's context: the engine (not Fairlane) says 400.
    status, _, body = await post(stack, chat("model-a", max_tokens=10_000_000, stream=stream))
    assert status == 400
    assert "maximum context length" in json.loads(body)["error"]["message"]


async def test_unknown_path_and_wrong_method(stack: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/v1/audio/transcriptions") as resp:
            assert resp.status == 404
            error = error_of(await resp.read())
            assert error["code"] == "not_found"
            assert error["message"] == (
                "unknown path; this API serves POST /v1/chat/completions, "
                "POST /v1/completions, POST /v1/responses, POST /v1/messages, "
                "POST /v1/embeddings, POST /rerank, POST /v1/rerank, POST /v2/rerank, "
                "POST /score, POST /v1/score, POST /classify, POST /pooling, POST /tokenize, "
                "POST /detokenize, POST /v1/messages/count_tokens, GET /v1/models"
            )
        async with session.get(stack.url + CHAT) as resp:
            assert resp.status == 405
            assert error_of(await resp.read())["code"] == "method_not_allowed"
        for path, shown in [("/v1/models", "/v1/models"), ("/v1/models/a", "/v1/models/{model}")]:
            async with session.post(stack.url + path, json={}) as resp:
                assert resp.status == 405, path
                error = error_of(await resp.read())
                assert (error["code"], error["message"]) == (
                    "method_not_allowed",
                    f"use GET for {shown}",
                )


async def test_health_and_models(stack: Any) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["missing_models"] == []
        async with session.get(stack.url + "/v1/models") as resp:
            ids = {m["id"] for m in (await resp.json())["data"]}
        assert ids == {"model-a", "model-b", "model-one", "model-p", "model-q"}
        async with session.get(stack.url + "/v1/models/model-a") as resp:
            assert resp.status == 200
            card = await resp.json()
        assert (card["id"], card["object"], card["engines"]) == ("model-a", "model", ["big"])
        for missing in ("nope", "org/model-a"):
            async with session.get(stack.url + "/v1/models/" + missing) as resp:
                assert resp.status == 404
                error = error_of(await resp.read())
            assert error["code"] == "model_not_found"
            assert error["message"] == f"The model `{missing}` does not exist."
        # HEAD, as load balancers probe: the status and headers of GET, no body.
        for path, status in [("/health", 200), ("/v1/models", 200), ("/v1/models/nope", 404)]:
            async with session.head(stack.url + path) as resp:
                assert (resp.status, await resp.read()) == (status, b""), path
                assert resp.headers["content-type"].startswith("application/json"), path


async def test_a_tenant_header_sent_twice_is_refused(stack: Any) -> None:
    headers = [("x-tenant-id", "alice"), ("x-tenant-id", "bob")]
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + CHAT, json=chat("model-a"), headers=headers) as resp,
    ):
        assert resp.status == 400
        error = error_of(await resp.read())
    assert (error["code"], error["message"]) == ("invalid_tenant", "X-Tenant-ID must be sent once")


@pytest.mark.parametrize("stream", [False, True])
async def test_http_1_0_clients_are_served(stack: Any, stream: bool) -> None:
    # ApacheBench and some proxies speak HTTP/1.0: no chunked encoding, so Envoy ends
    # the response (a stream too) by closing the connection.
    body = json.dumps(chat("model-b", max_tokens=3, stream=stream)).encode()
    host, port = stack.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST " + CHAT.encode() + b" HTTP/1.0\r\nX-Tenant-ID: alice\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    response = await asyncio.wait_for(reader.read(), timeout=30)  # to the server's close
    writer.close()
    head, _, payload = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200"), head
    if stream:
        assert payload.count(b'"content":" tok"') == 3 and payload.endswith(b"data: [DONE]\n\n")
    else:
        assert json.loads(payload)["usage"]["completion_tokens"] == 3


def test_openai_sdk_streams_through_fairlane(stack: Any) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )
    stream = client.chat.completions.create(
        model="model-b", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text.strip()
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert "does not exist" in str(info.value)
    assert client.models.retrieve("model-b").id == "model-b"
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize(
    ("model", "message", "refused_by_fairlane"),
    [
        ("model-p", "JSON decode error: nested too deeply", 0),  # the engine's own answer
        ("model-q", "request body nests JSON too deeply", 1),  # Fairlane's, adding priority
    ],
)
async def test_json_nested_as_deep_as_envoy_takes_is_refused_not_crashed_on(
    stack: Any, model: str, message: str, refused_by_fairlane: int
) -> None:
    """Envoy's parser takes up to 999 levels, Python's ~970: a body in between got 500
    from the simulator and 503 from the worker (its handler raised RecursionError)."""
    labels = {"tenant": "alice", "reason": "invalid_json"}
    before = await metric(stack, "fairlane_rejected_total", **labels)
    deep = b"[" * 990 + b"]" * 990
    raw = json.dumps(chat(model, max_tokens=2)).encode()[:-1] + b', "x": ' + deep + b"}"
    status, _, reply = await post(stack, None, raw=raw)
    assert status == 400, reply
    assert message in json.loads(reply)["error"]["message"]
    after = await metric(stack, "fairlane_rejected_total", **labels)
    assert after - before == refused_by_fairlane
    engine = {"model-p": "prio", "model-q": "prio-external"}[model]
    async with asyncio.timeout(5):  # the slot comes back with the access log entry
        while await metric(stack, "fairlane_inflight", engine=engine):
            await asyncio.sleep(0.05)
    status, _, reply = await post(stack, chat(model, max_tokens=2))
    assert status == 200, reply  # and the slot it held is free again
