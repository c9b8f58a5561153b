"""HTTP against a running stack: OpenAI request bodies, POSTs, OpenAI error objects, SSE
streams read to their end, and raw requests over a socket (for what HTTP clients refuse
to send: CR/LF in header values, invalid methods, ...)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from testkit.waits import eventually

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "Hello there"}]
SHORT = aiohttp.ClientTimeout(total=15)


def chat(model: str, max_tokens: int = 4, stream: bool = False, **extra: Any) -> dict[str, Any]:
    """A chat completion request; its messages are a copy of HELLO (tests edit them)."""
    messages = [dict(message) for message in HELLO]
    return {
        "model": model,
        "max_tokens": max_tokens,
        "stream": stream,
        "messages": messages,
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
    """POST ``body`` as JSON (or ``raw`` as it is) as ``tenant`` (None: no X-Tenant-ID):
    the status, the headers (lower-case names) and the body."""
    headers = {"content-type": "application/json", **(headers or {})}
    if tenant is not None:
        headers["x-tenant-id"] = tenant
    data = raw if raw is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession(timeout=SHORT) as session,
        session.post(stack.url + path, data=data, headers=headers) as resp,
    ):
        return resp.status, {k.lower(): v for k, v in resp.headers.items()}, await resp.read()


def error_of(body: bytes) -> dict[str, Any]:
    """The OpenAI error object of a response body (asserting its four fields)."""
    parsed = json.loads(body)
    assert set(parsed["error"]) == {"message", "type", "param", "code"}
    return dict(parsed["error"])


async def wait_healthy(stack: Any, timeout_s: float = 30) -> None:
    async def healthy() -> bool:
        try:
            async with (
                aiohttp.ClientSession(timeout=SHORT) as session,
                session.get(stack.url + "/health") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    assert await eventually(healthy, timeout_s), "the stack did not become healthy again"


class StreamResult:
    def __init__(self) -> None:
        self.status = 0
        self.chunks = 0
        self.done = False
        self.error_events: list[bytes] = []
        self.exception: BaseException | None = None
        self.ended_at = 0.0


async def read_stream(
    stack: Any, body: dict[str, Any], tenant: str, started: asyncio.Event | None = None
) -> StreamResult:
    """Read an SSE stream to its end, noting how it ended (never raises); ``started`` is
    set after the fifth chunk (or at the end)."""
    result = StreamResult()
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
            session.post(stack.url + CHAT, json=body, headers={"x-tenant-id": tenant}) as resp,
        ):
            result.status = resp.status
            async for line in resp.content:
                if line.startswith(b"data: [DONE]"):
                    result.done = True
                elif line.startswith(b"data: {"):
                    result.chunks += 1
                    if b'"error"' in line:
                        result.error_events.append(line)
                    if started is not None and result.chunks >= 5:
                        started.set()
    except (aiohttp.ClientError, TimeoutError) as exc:
        result.exception = exc
    result.ended_at = time.monotonic()
    if started is not None:
        started.set()
    return result


# -- raw requests over a socket ----------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def build(method: bytes, path: bytes, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """An HTTP/1.1 request, bytes as given, with Host, Content-Length and Connection: close."""
    head = [method + b" " + path + b" HTTP/1.1", b"Host: fairlane"]
    head += [k + b": " + v for k, v in headers]
    head += [b"Content-Length: " + str(len(body)).encode(), b"Connection: close"]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def exchange(port: int, raw: bytes, method: str, timeout_s: float = 20) -> Answer:
    """One request on a fresh connection; raises on a hang (timeout) or no answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        # Envoy may answer and close before it has read everything.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(raw)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        body = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body)


def openai_error(answer: Answer) -> str | None:
    """None when the answer is an OpenAI-style JSON error, else what is wrong with it."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {answer.headers.get('content-type')!r}"
    try:
        error = error_of(answer.body)
        assert isinstance(error["message"], str) and error["message"]
    except (ValueError, KeyError, TypeError, AssertionError):
        return "not an OpenAI error object"
    return None


def unverified_context() -> ssl.SSLContext:
    """A client context that checks no certificate: for a stack's own test one, where
    the test is not about trust."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context
