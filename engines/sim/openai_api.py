"""Chat and completions response shapes, as vLLM's OpenAI server writes them.

The output is always exactly ``max_tokens`` tokens of ``TOKEN_TEXT`` (as if every
request set ``ignore_eos``), so benchmarks get exact, reproducible lengths.
"""

from __future__ import annotations

import json
from typing import Any

from .validation import ApiError, GenerationRequest, Kind

TOKEN_TEXT = " tok"


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class StreamChunks:
    """The SSE chunks of one choice, encoded once per request: every token's chunk is the
    same bytes, so writing a token costs a bytes concatenation, not a JSON encode."""

    def __init__(self, kind: Kind, request_id: str, created: int, model: str, index: int) -> None:
        self._head: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk" if kind == "chat" else "text_completion",
            "created": created,
            "model": model,
        }
        if kind == "chat":
            self.first = self._choice(index, {"role": "assistant", "content": ""}, None)
            self.token = self._choice(index, {"content": TOKEN_TEXT}, None)
            self.last = self._choice(index, {"content": TOKEN_TEXT}, "length")
        else:
            self.first = b""
            self.token = self._completion_choice(index, None)
            self.last = self._completion_choice(index, "length")

    def _choice(self, index: int, delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None
        return _sse({**self._head, "choices": [choice]})

    def _completion_choice(self, index: int, finish: str | None) -> bytes:
        choice = {"index": index, "text": TOKEN_TEXT, "logprobs": None, "finish_reason": finish}
        return _sse({**self._head, "choices": [{**choice, "stop_reason": None}]})

    def step(self, sent: int, new: int, max_tokens: int, prompt_tokens: int | None) -> bytes:
        """The chunks of tokens ``sent + 1`` to ``sent + new``, the first one's role delta
        before them; with ``prompt_tokens`` each carries the choice's running usage, as
        vLLM writes it under ``continuous_usage_stats``."""
        done = sent + new
        tokens = [self.token] * new
        if done == max_tokens:
            tokens[-1] = self.last
        if sent == 0 and self.first:
            tokens.insert(0, self.first)
        if prompt_tokens is None:
            return b"".join(tokens)
        first_count = done - len(tokens) + 1  # the role delta, if any, counts 0 tokens
        return b"".join(
            _with_usage(chunk, prompt_tokens, first_count + i) for i, chunk in enumerate(tokens)
        )

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return _sse({**self._head, "choices": [], "usage": usage(prompt_tokens, completion_tokens)})


def _with_usage(chunk: bytes, prompt_tokens: int, completion_tokens: int) -> bytes:
    """One encoded chunk (``data: {...}\\n\\n``) with a ``usage`` member added."""
    counts = json.dumps(usage(prompt_tokens, completion_tokens), separators=(",", ":"))
    return chunk[:-3] + b',"usage":' + counts.encode() + b"}\n\n"


def sse_error(error: ApiError) -> bytes:
    """An error inside an already started stream, as vLLM sends it."""
    return _sse(error.body())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def full_response(
    gen: GenerationRequest, request_id: str, created: int, completion_tokens: int
) -> dict[str, Any]:
    """The non-streaming response: every choice ran to ``max_tokens``."""
    text = TOKEN_TEXT * gen.max_tokens
    choices: list[dict[str, Any]]
    if gen.kind == "chat":
        message = {"role": "assistant", "content": text, "tool_calls": []}
        choices = [{"index": i, "message": message, "logprobs": None} for i in range(gen.n)]
    else:
        count = len(gen.prompt_tokens) * gen.n
        choices = [{"index": i, "text": text, "logprobs": None} for i in range(count)]
    for choice in choices:
        choice.update(finish_reason="length", stop_reason=None)
    return {
        "id": request_id,
        "object": "chat.completion" if gen.kind == "chat" else "text_completion",
        "created": created,
        "model": gen.model,
        "choices": choices,
        "usage": usage(sum(gen.prompt_tokens), completion_tokens),
    }
