"""The request path through the real Envoy, the real worker and real simulator engines."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from fairlane.ports import free_port

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there"}]


PRIO_PORT = free_port()


def _policy() -> dict[str, Any]:
    return {
        "version": 1,
        "listener": {"max_body_bytes": MAX_BODY},
        "tenants": {
            "alice": {},
            "bob": {"priority": "batch"},
            # A burst of 1,000 tokens, 100 a second.
            "metered": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
            "refused": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
        },
        "engines": {
            "big": {"kind": "sim", "preset": "a100-8b", "models": ["model-a"]},
            "small": {"kind": "sim", "preset": "h100-8b", "models": ["model-b"]},
            "prio": {
                "kind": "sim",
                "preset": "h100-8b",
                "models": ["model-p"],
                "port": PRIO_PORT,
                "args": ["--model", "model-q"],  # for prio-external, below
                "inject_priority": True,
                "linger_s": 0,  # each test's tenant alone in the pool
            },
            # The same simulator as an external engine: it gets the priority in the body.
            "prio-external": {
                "kind": "external",
                "url": f"http://127.0.0.1:{PRIO_PORT}",
                "models": ["model-q"],
                "inject_priority": True,
                "linger_s": 0,
            },
            "one": {
                "kind": "sim",
                "preset": "a100-8b",
                "models": ["model-one"],
                "max_inflight": 1,
                "queue": {"max_per_tenant": 1, "timeout_s": 1},
            },
        },
    }


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(_policy())


def chat(model: str, max_tokens: int = 8, stream: bool = False, **extra: Any) -> dict[str, Any]:
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": HELLO,
        **extra,
    }


async def post(
    stack: Any,
    body: Any,
    tenant: str | None = "alice",
    path: str = CHAT,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    headers = {"content-type": "application/json", **(headers or {})}
    if tenant is not None:
        headers["x-tenant-id"] = tenant
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


async def metric(stack: Any, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(stack.url + "/metrics") as resp:
        text = await resp.text()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{") or line.startswith(f"{name} "):
            series, value = line.rsplit(" ", 1)
            got = series[len(name) :].strip("{}")
            if ",".join(sorted(got.split(","))) == want or (not labels and not got):
                return float(value)
    return 0.0


def error_of(body: bytes) -> dict[str, Any]:
    parsed = json.loads(body)
    assert set(parsed["error"]) == {"message", "type", "param", "code"}
    return dict(parsed["error"])


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


async def test_oversize_body_is_413(stack: Any) -> None:
    big = chat("model-a")
    big["messages"][0]["content"] = "x" * (MAX_BODY + 10)
    status, _, body = await post(stack, big)
    assert status == 413
    error = error_of(body)
    assert error["code"] == "body_too_large"
    assert "MiB limit" in error["message"]


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
        await asyncio.sleep(0.2)  # the end-of-request record that refunds it
    assert await metric(stack, "fairlane_tokens_total", **labels) == 0
    status, _, answer = await post(stack, chat("model-a", max_tokens=1), tenant="refused")
    assert status == 200, answer


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


@pytest.mark.parametrize(("model", "how"), [("model-p", "header"), ("model-q", "body")])
@pytest.mark.parametrize(("tenant", "priority"), [("alice", "10000"), ("bob", "30000")])
async def test_priority_injected_for_priority_engines(
    stack: Any, model: str, how: str, tenant: str, priority: str
) -> None:
    """Level: class rank x 2, + 1 while over its share or alone in the pool (as here, so
    that a tenant arriving next goes first): interactive 1, batch 3; times 10,000, plus
    the slots the tenant holds (none here). Managed vLLM and sim engines get it as
    X-Vllm-Priority, others in the body (a second round trip)."""
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
