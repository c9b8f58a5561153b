"""Anthropic's Messages API (``POST /v1/messages``) as vLLM 0.32 serves it: request
rules, the message object and the typed stream events.

vLLM turns the request into a chat and the chat's answer back into a message, so the
answer is a chat's (``max_tokens`` tokens of ``TOKEN_TEXT``, ``stop_reason``
``max_tokens``). A stream opens with ``message_start`` on the first token (vLLM writes
it when the chat stream's first chunk arrives), ends with ``message_delta`` (the usage)
and ``message_stop``; no ``[DONE]``. Errors are ``{"type": "error", "error": {...}}``.
"""

from __future__ import annotations

import json
from typing import Any

from fairlane.lax import lax_int

from .openai_api import TOKEN_TEXT
from .validation import (
    ApiError,
    GenerationRequest,
    chat_tokens,
    check_sampling,
    flag_field,
    priority_field,
    served_model,
)


def parse_message(
    body: dict[str, Any], models: list[str], chars_per_token: float
) -> GenerationRequest:
    """Validate a Messages body: ``max_tokens`` is required, ``system`` (a text or text
    blocks) is the chat's first message, ``messages`` content is a text or blocks."""
    model = served_model(body, models)
    system = body.get("system")
    if system is not None and not isinstance(system, str | list):
        raise ApiError(400, "system must be a string or a list of text blocks", param="system")
    messages = body.get("messages")
    if isinstance(messages, list) and messages and system:
        messages = [{"role": "system", "content": system}, *messages]
    prompt_tokens = chat_tokens(messages, chars_per_token)
    sent = body.get("max_tokens")
    max_tokens = None if sent is None else lax_int(sent)  # as vLLM reads it: "64" is 64
    if max_tokens is None or max_tokens < 1:
        message = f"max_tokens: an integer of at least 1 is required, got {sent!r}."
        raise ApiError(400, message, param="max_tokens")
    stream = flag_field(body, "stream")
    check_sampling(body)
    return GenerationRequest(
        "message", model, [prompt_tokens], 1, max_tokens, stream, stream, stream,
        priority_field(body),
    )  # fmt: skip


def error_body(error: ApiError) -> dict[str, Any]:
    """vLLM's Anthropic error: its own error type and message, no code."""
    return {"type": "error", "error": {"type": error.err_type, "message": error.message}}


def message_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}


def message_object(
    gen: GenerationRequest, message_id: str, text: str | None, usage: dict[str, int]
) -> dict[str, Any]:
    """The message: ended at ``max_tokens`` (``text``), or opening a stream (None)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "content": [] if text is None else [{"type": "text", "text": text}],
        "model": gen.model,
        "stop_reason": None if text is None else "max_tokens",
        "stop_sequence": None,
        "usage": usage,
    }


class MessageEvents:
    """The SSE events of one streamed message. Every token's ``content_block_delta`` is
    the same bytes, encoded once."""

    def __init__(self, gen: GenerationRequest, message_id: str, prompt_tokens: int) -> None:
        self._gen = gen
        self._id = message_id
        self._prompt_tokens = prompt_tokens
        self._started = False
        delta = {"type": "text_delta", "text": TOKEN_TEXT}
        self._delta = _event("content_block_delta", {"index": 0, "delta": delta})

    @staticmethod
    def opening() -> bytes:
        """Nothing before the first token: vLLM starts the message with it."""
        return b""

    def deltas(self, new: int) -> bytes:
        """The text deltas of ``new`` tokens; before the first, ``message_start`` and
        the text block's start."""
        out = [self._delta] * new
        if not self._started:
            self._started = True
            usage = message_usage(self._prompt_tokens, 0)
            message = message_object(self._gen, self._id, None, usage)
            block = {"index": 0, "content_block": {"type": "text", "text": ""}}
            out[:0] = [
                _event("message_start", {"message": message}),
                _event("content_block_start", block),
            ]
        return b"".join(out)

    @staticmethod
    def closing(generated: int, prompt_tokens: int) -> bytes:
        """The block's stop, the stop reason with the usage, and ``message_stop``."""
        delta = {"stop_reason": "max_tokens", "stop_sequence": None}
        usage = message_usage(prompt_tokens, generated)
        return b"".join(
            [
                _event("content_block_stop", {"index": 0}),
                _event("message_delta", {"delta": delta, "usage": usage}),
                _event("message_stop", {}),
            ]
        )

    @staticmethod
    def error(error: ApiError) -> bytes:
        """An error after the stream started, as an ``error`` event."""
        return _event("error", {"error": error_body(error)["error"]})


def _event(kind: str, fields: dict[str, Any]) -> bytes:
    data = json.dumps({"type": kind, **fields}, separators=(",", ":"))
    return f"event: {kind}\ndata: {data}\n\n".encode()
