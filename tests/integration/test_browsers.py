"""Browser pages calling the API (CORS) through the real Envoy: preflights answered for
the policy's origins only, CORS headers on every answer, none without the setting."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

APP = "https://app.example.com"
CHAT = "/v1/chat/completions"
PREFLIGHT = {
    "access-control-request-method": "POST",
    "access-control-request-headers": "authorization, content-type, x-tenant-id, x-stainless-os",
}


def _policy(origins: list[str]) -> dict[str, Any]:
    return {
        "version": 1,
        "listener": {"cors_allow_origins": origins},
        "tenants": {"alice": {}, "capped": {"limits": {"requests_per_minute": 1}}},
        "engines": {"sim": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
    }


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(_policy([APP]))


async def send(
    stack: Any, method: str, path: str, headers: dict[str, str], body: Any = None
) -> tuple[int, Any, bytes]:
    data = None if body is None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, stack.url + path, headers=headers, data=data) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


def chat(tenant: str, origin: str = APP) -> tuple[dict[str, str], dict[str, Any]]:
    headers = {"origin": origin, "x-tenant-id": tenant, "content-type": "application/json"}
    body = {"model": "model-a", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    return headers, body


@pytest.mark.parametrize("path", [CHAT, "/v1/models", "/v1/embeddings"])
async def test_a_preflight_from_an_allowed_origin_is_answered(stack: Any, path: str) -> None:
    status, headers, _ = await send(stack, "OPTIONS", path, {"origin": APP, **PREFLIGHT})
    assert status == 200
    assert headers["access-control-allow-origin"] == APP
    assert "POST" in headers["access-control-allow-methods"]
    # The OpenAI SDKs' own headers too.
    assert "x-stainless-os" in headers["access-control-allow-headers"]


async def test_a_preflight_from_another_origin_gets_no_permission(stack: Any) -> None:
    other = {"origin": "https://evil.example", **PREFLIGHT}
    status, headers, _ = await send(stack, "OPTIONS", CHAT, other)
    assert status == 200
    assert "access-control-allow-origin" not in headers


async def test_every_answer_carries_the_cors_headers(stack: Any) -> None:
    headers, body = chat("alice")
    status, got, _ = await send(stack, "POST", CHAT, headers, body)
    assert status == 200
    assert got["access-control-allow-origin"] == APP
    # Fairlane's own refusals: a page must be able to read their error and Retry-After.
    headers, body = chat("capped")
    await send(stack, "POST", CHAT, headers, body)
    status, got, answer = await send(stack, "POST", CHAT, headers, body)
    assert status == 429, answer
    assert got["access-control-allow-origin"] == APP
    assert got["access-control-expose-headers"] == "*"
    assert "retry-after" in got


async def test_an_options_request_that_is_no_preflight_is_405(stack: Any) -> None:
    status, _, answer = await send(stack, "OPTIONS", CHAT, {"origin": APP})
    assert status == 405
    assert json.loads(answer)["error"]["code"] == "method_not_allowed"


async def test_no_cors_without_the_setting(stack_factory: Any) -> None:
    plain = stack_factory(_policy([]))
    status, headers, _ = await send(plain, "OPTIONS", CHAT, {"origin": APP, **PREFLIGHT})
    assert status == 405
    assert "access-control-allow-origin" not in headers
    headers, body = chat("alice")
    status, got, _ = await send(plain, "POST", CHAT, headers, body)
    assert status == 200
    assert "access-control-allow-origin" not in got


async def test_any_origin(stack_factory: Any) -> None:
    anyone = stack_factory(_policy(["*"]))
    origin = "http://localhost:3000"
    status, headers, _ = await send(anyone, "OPTIONS", CHAT, {"origin": origin, **PREFLIGHT})
    assert status == 200
    assert headers["access-control-allow-origin"] == origin
