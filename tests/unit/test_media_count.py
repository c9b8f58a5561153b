"""envoy/media.lua, the filter that finds a chat's or a response's media for the prompt
estimate, run under LuaJIT (as in Envoy). Envoy runs it through the real data path in
tests/integration/test_admission_accounting.py."""

from __future__ import annotations

import base64
import json
import time
from importlib import resources
from typing import Any

import lupa.luajit21 as luajit  # a dev dependency: no silent skip without it
import pytest

IMAGE = "data:image/png;base64," + base64.b64encode(bytes(range(256)) * 40).decode()
AUDIO = base64.b64encode(bytes(3000)).decode()


@pytest.fixture(scope="module")
def media() -> Any:
    source = resources.files("fairlane.envoy").joinpath("media.lua").read_text()
    # The script keeps its scanner local; returning it is the only addition.
    scan = luajit.LuaRuntime(encoding=None).execute(source + "\nreturn media")
    return lambda body: tuple(scan(json.dumps(body).encode()))


def chat(*parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": [{"role": "user", "content": list(parts)}], **extra}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


def audio(data: str) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def test_a_text_chat_has_no_media(media: Any) -> None:
    assert media({"model": "m", "messages": [{"role": "user", "content": "hi"}]}) == (0, 0)


def test_inline_images_and_audio_are_counted_with_their_bytes(media: Any) -> None:
    body = chat(text("what is this?"), image(IMAGE), image(IMAGE), audio(AUDIO))
    assert media(body) == (3, 2 * (len(IMAGE) + 2) + len(AUDIO) + 2)


def test_an_image_by_link_is_an_image_too(media: Any) -> None:
    """The engine fetches it and makes it tokens; its URL is not prompt text."""
    url = "https://example.com/cat.png"
    assert media(chat(image(url), image(IMAGE))) == (2, len(url) + 2 + len(IMAGE) + 2)


def test_a_responses_input_image_is_an_image(media: Any) -> None:
    """/v1/responses puts the link or data URL straight in `image_url` (vLLM also takes
    that form in a chat); a chat's usual `image_url` object is counted once, by its `url`."""
    url = "https://example.com/cat.png"
    content = [
        {"type": "input_text", "text": "what is this?"},
        {"type": "input_image", "image_url": IMAGE},
        {"type": "input_image", "image_url": url, "detail": "auto"},
    ]
    body = {"model": "m", "input": [{"role": "user", "content": content}]}
    assert media(body) == (2, len(IMAGE) + 2 + len(url) + 2)
    assert media(chat(image(url))) == (1, len(url) + 2)


@pytest.mark.parametrize(
    "body",
    [
        # Text is estimated as text however it looks: the engine tokenizes it.
        chat(text(IMAGE)),
        chat(text(json.dumps({"url": IMAGE, "data": AUDIO, "image_url": IMAGE}))),
        {"model": "m", "messages": [{"role": "user", "content": IMAGE}]},
        # A short `data` string is a schema's, not audio.
        chat(text("hi"), tools=[{"function": {"parameters": {"data": "x" * 100}}}]),
    ],
)
def test_text_that_looks_like_media_is_not_media(media: Any, body: dict[str, Any]) -> None:
    assert media(body) == (0, 0)


def test_many_keys_are_scanned_in_linear_time(media: Any) -> None:
    """A body of 200,000 short `data` values: one pass, not a quadratic one."""
    body = chat(*({"type": "input_audio", "input_audio": {"data": "x"}} for _ in range(200_000)))
    started = time.monotonic()
    assert media(body) == (0, 0)
    assert time.monotonic() - started < 2.0
