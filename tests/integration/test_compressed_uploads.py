"""Compressed request bodies through the real Envoy: its decompressors hand the worker,
the size estimate and the engine plain JSON; a body they cannot undo is "not valid JSON",
and an encoding they cannot undo gets a 415 that names it as sent."""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections.abc import Callable
from typing import Any

import aiohttp
import brotli
import pytest
import zstandard

pytestmark = pytest.mark.integration

MAX_BODY = 64 * 1024
CHAT = "/v1/chat/completions"
COMPRESS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@pytest.fixture(scope="module")
def stack(stack_factory: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "listener": {"max_body_bytes": MAX_BODY},
            "tenants": {
                "alice": {},
                # A burst of 1,000 tokens.
                "metered": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
            },
            "engines": {"sim": {"kind": "sim", "preset": "a100-8b", "models": ["model-a"]}},
        }
    )


def chat(content: str = "Hello there", max_tokens: int = 3, **extra: Any) -> bytes:
    messages = [{"role": "user", "content": content}]
    body = {"model": "model-a", "max_tokens": max_tokens, "messages": messages, **extra}
    return json.dumps(body).encode()


async def post_to(
    stack: Any,
    session: aiohttp.ClientSession,
    data: bytes,
    encoding: str | None,
    tenant: str = "alice",
) -> tuple[int, dict[str, Any]]:
    headers = {"content-type": "application/json", "x-tenant-id": tenant}
    if encoding is not None:
        headers["content-encoding"] = encoding
    async with session.post(stack.url + CHAT, data=data, headers=headers) as resp:
        return resp.status, json.loads(await resp.read())


@pytest.mark.parametrize("encoding", sorted(COMPRESS))
async def test_a_compressed_body_is_served(stack: Any, encoding: str) -> None:
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, COMPRESS[encoding](chat()), encoding)
    assert status == 200, answer
    assert answer["usage"]["completion_tokens"] == 3


async def test_the_estimate_counts_the_decompressed_prompt(stack: Any) -> None:
    # ~4,000 prompt tokens in ~100 compressed bytes, while the answer streams: the token
    # bucket must already hold them (not ~30), or the next request gets in.
    data = gzip.compress(chat("x" * 16000, max_tokens=400, stream=True))
    assert len(data) < 200
    headers = {"content-type": "application/json", "x-tenant-id": "metered"}
    headers["content-encoding"] = "gzip"
    async with (
        aiohttp.ClientSession() as session,
        session.post(stack.url + CHAT, data=data, headers=headers) as streaming,
    ):
        assert streaming.status == 200
        await streaming.content.readline()
        status, answer = await post_to(stack, session, chat(max_tokens=1), None, "metered")
        assert status == 429, answer
        assert answer["error"]["code"] == "rate_limit_exceeded"


async def test_a_decompression_bomb_is_413(stack: Any) -> None:
    data = gzip.compress(chat("a" * 10 * MAX_BODY))
    assert len(data) < MAX_BODY // 20
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, data, "gzip")
    assert status == 413
    assert answer["error"]["code"] == "body_too_large"


# Bytes no decompressor takes: random, but the same on every run.
NOISE = bytes(random.Random(7).getrandbits(8) for _ in range(300))


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("gzip", gzip.compress(chat())[:30]),  # truncated: part of the JSON
        ("zstd", COMPRESS["zstd"](chat())[:20]),
        ("br", COMPRESS["br"](chat())[:20]),  # truncated before its first byte
        # Not in the encoding it names: the decompressor passes on nothing.
        ("gzip", chat()),
        ("br", chat()),
        ("zstd", chat()),
        ("gzip", NOISE),
        ("br", NOISE),
        ("zstd", NOISE),
        ("gzip", gzip.compress(chat())[:10] + NOISE),  # a gzip header, then garbage
        ("gzip", gzip.compress(b"")),  # nothing to decompress is not JSON either
    ],
)
async def test_a_body_that_does_not_decompress_is_invalid_json(
    stack: Any, encoding: str, data: bytes
) -> None:
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, data, encoding)
    assert status == 400
    assert answer["error"]["code"] == "invalid_json"
    assert answer["error"]["message"] == "request body is not valid JSON"


@pytest.mark.parametrize(
    ("encoding", "data"),
    [
        ("deflate", zlib.compress(chat())),
        ("compress", zlib.compress(chat())),
        # Envoy's decompressors undo one encoding: each takes its own token out of a
        # list and tries, and the worker sees what is left ("gzip" of "gzip, gzip").
        ("gzip, gzip", gzip.compress(gzip.compress(chat()))),
        ("gzip, deflate", zlib.compress(chat())),
    ],
)
async def test_an_encoding_envoy_cannot_undo_is_415(stack: Any, encoding: str, data: bytes) -> None:
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, data, encoding)
    assert status == 415
    error = answer["error"]
    assert error["code"] == "unsupported_content_encoding"
    want = f"Content-Encoding {encoding!r} is not supported; send one of gzip, br, zstd or none"
    assert error["message"] == want


async def test_identity_is_no_encoding(stack: Any) -> None:
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, chat(), "identity")
    assert status == 200, answer


async def test_a_prompt_that_compresses_past_gzips_default_ratio_is_served(stack: Any) -> None:
    # Envoy's gzip decompressor stops at 100x by default; max_body_bytes is the bound.
    data = gzip.compress(chat("a" * 60_000, max_tokens=1))
    assert len(data) * 100 < 60_000
    async with aiohttp.ClientSession() as session:
        status, answer = await post_to(stack, session, data, "gzip")
    assert status == 200, answer
