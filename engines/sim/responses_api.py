"""Response shapes of OpenAI's Responses API (``POST /v1/responses``), stateless, as
vLLM 0.32 writes them.

The answer is a chat's (``max_output_tokens`` tokens of ``TOKEN_TEXT``) in one
``message`` output item, usage as ``input_tokens``/``output_tokens``; a stream is typed
events (``event:`` lines, a ``sequence_number`` each, no ``[DONE]``) whose last,
``response.completed``, carries the usage.
"""

from __future__ import annotations

import json
from typing import Any

from .openai_api import TOKEN_TEXT
from .validation import ApiError, GenerationRequest


def response_object(
    gen: GenerationRequest,
    response_id: str,
    created: int,
    text: str,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """The response: in progress (``usage`` None) or ended at ``max_output_tokens``, as
    every simulated answer does."""
    done = usage is not None
    output = [_message(response_id, text, "completed")] if done else []
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "model": gen.model,
        "status": "incomplete" if done else "in_progress",
        "incomplete_details": {"reason": "max_output_tokens"} if done else None,
        "instructions": None,
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "none",
        "tools": [],
        "max_output_tokens": gen.max_tokens,
        "previous_response_id": None,
        "reasoning": None,
        "text": None,
        "truncation": "disabled",
        "usage": usage,
        "metadata": None,
    }


def response_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": prompt_tokens,
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": completion_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _message(response_id: str, text: str, status: str) -> dict[str, Any]:
    content: list[dict[str, Any]] = [
        {"type": "output_text", "text": text, "annotations": [], "logprobs": None}
    ]
    return {
        "id": _item_id(response_id),
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def _item_id(response_id: str) -> str:
    return "msg_" + response_id.removeprefix("resp_")


class ResponseEvents:
    """The typed SSE events of one streamed response, numbered in order. Every token's
    event is the same bytes but for its number, so writing one costs two
    concatenations, not a JSON encode."""

    def __init__(self, gen: GenerationRequest, response_id: str, created: int) -> None:
        self._gen = gen
        self._id = response_id
        self._created = created
        self._item_id = _item_id(response_id)
        self._seq = 0
        head, tail = self._encoded("response.output_text.delta", self._part(delta=TOKEN_TEXT))
        self._delta_head, self._delta_tail = head, tail

    def opening(self) -> bytes:
        """Created, in progress, the message item and its text part opened."""
        in_progress = response_object(self._gen, self._id, self._created, "", None)
        text_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return b"".join(
            [
                self._event("response.created", {"response": in_progress}),
                self._event("response.in_progress", {"response": in_progress}),
                self._event(
                    "response.output_item.added",
                    {"item": _message(self._id, "", "in_progress"), "output_index": 0},
                ),
                self._event("response.content_part.added", self._part(part=text_part)),
            ]
        )

    def deltas(self, new: int) -> bytes:
        """One ``response.output_text.delta`` event per new token."""
        out = []
        for _ in range(new):
            out.append(self._delta_head + str(self._seq).encode() + self._delta_tail)
            self._seq += 1
        return b"".join(out)

    def closing(self, generated: int, prompt_tokens: int) -> bytes:
        """The text, part and item done, then ``response.completed`` with the usage."""
        text = TOKEN_TEXT * generated
        part: dict[str, Any] = {
            "type": "output_text",
            "text": text,
            "annotations": [],
            "logprobs": None,
        }
        usage = response_usage(prompt_tokens, generated)
        done = response_object(self._gen, self._id, self._created, text, usage)
        return b"".join(
            [
                self._event("response.output_text.done", self._part(text=text)),
                self._event("response.content_part.done", self._part(part=part)),
                self._event(
                    "response.output_item.done",
                    {"item": _message(self._id, text, "completed"), "output_index": 0},
                ),
                self._event("response.completed", {"response": done}),
            ]
        )

    def error(self, error: ApiError) -> bytes:
        """An error after the stream started, as an ``error`` event."""
        body = {"code": str(error.status), "message": error.message, "param": error.param}
        return self._event("error", body)

    def _part(self, **fields: Any) -> dict[str, Any]:
        return {"item_id": self._item_id, "output_index": 0, "content_index": 0, **fields}

    def _event(self, kind: str, fields: dict[str, Any]) -> bytes:
        head, tail = self._encoded(kind, fields)
        event = head + str(self._seq).encode() + tail
        self._seq += 1
        return event

    @staticmethod
    def _encoded(kind: str, fields: dict[str, Any]) -> tuple[bytes, bytes]:
        """The event's bytes before and after its sequence number."""
        data = json.dumps({**fields, "type": kind}, separators=(",", ":"))
        head = f'event: {kind}\ndata: {data[:-1]},"sequence_number":'
        return head.encode(), b"}\n\n"
