"""OpenAI request validation and response shapes, as vLLM's OpenAI server produces them.

There is no tokenizer and no model: prompt length is estimated from characters, and
the output is always exactly ``max_tokens`` tokens of ``TOKEN_TEXT`` (as if every request
set ``ignore_eos``), so benchmarks get exact, reproducible lengths.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

TOKEN_TEXT = " tok"
# The simulator's answer when a request leaves out max_tokens. vLLM would generate up to
# the context limit (until EOS); with no EOS here that would be tens of thousands of
# tokens, so a typical chat answer length is used instead.
DEFAULT_MAX_TOKENS = 128
# Choices per prompt: OpenAI's own limit (vLLM sets none; each choice is one sequence).
MAX_N = 128
# Llama-3 chat template: per message <|start_header_id|>role<|end_header_id|>\n\n ...
# <|eot_id|>; per prompt <|begin_of_text|> plus the assistant header that opens the answer.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_CHAT = 4

Kind = Literal["chat", "completion"]


class ApiError(Exception):
    """An error answered with vLLM's error object and an HTTP status."""

    def __init__(
        self, status: int, message: str, err_type: str = "BadRequestError", param: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.err_type = err_type
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.err_type,
                "param": self.param,
                "code": self.status,
            }
        }


@dataclass(frozen=True)
class GenerationRequest:
    """What the simulator needs from a validated request; ``n`` choices per prompt."""

    kind: Kind
    model: str
    prompt_tokens: list[int]
    n: int
    max_tokens: int
    stream: bool
    include_usage: bool
    continuous_usage: bool  # vLLM's continuous_usage_stats: a running count on every chunk
    priority: int | None


def count_tokens(text: str, chars_per_token: float) -> int:
    return max(1, round(len(text) / chars_per_token))


def parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"JSON decode error: {exc}") from None
    except RecursionError:  # nesting deeper than Python's recursion limit (~970 here)
        raise ApiError(400, "JSON decode error: nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "Request body must be a JSON object")
    return body


def parse_generation(
    kind: Kind, body: dict[str, Any], models: list[str], chars_per_token: float
) -> GenerationRequest:
    """Validate a chat or completions body (unknown fields are ignored, like vLLM)."""
    model = body.get("model", models[0])
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    if kind == "chat":
        prompts = [_chat_tokens(body.get("messages"), chars_per_token)]
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
    else:
        prompts = _completion_tokens(body.get("prompt"), chars_per_token)
        max_tokens = body.get("max_tokens")
    if max_tokens is None:
        max_tokens = DEFAULT_MAX_TOKENS
    if not _is_int(max_tokens) or max_tokens < 1:
        message = f"max_tokens must be an integer of at least 1, got {max_tokens!r}."
        raise ApiError(400, message, param="max_tokens")
    n = body.get("n")
    if n is None:
        n = 1
    if not _is_int(n) or not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be an integer from 1 to {MAX_N}, got {n!r}.", param="n")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream must be a boolean", param="stream")
    options = body.get("stream_options")
    if options is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    if not isinstance(options, dict):
        options = {}
    include_usage = options.get("include_usage") is True
    continuous = include_usage and options.get("continuous_usage_stats") is True
    priority = body.get("priority")
    if priority is not None and not _is_int(priority):
        raise ApiError(400, "priority must be an integer", param="priority")
    _check_sampling(body)
    return GenerationRequest(
        kind, model, prompts, n, max_tokens, stream, include_usage, continuous, priority
    )


# The sampling parameters a client most often gets wrong, with vLLM's bounds. The
# simulator ignores their values, but a request vLLM would refuse is refused here too.
_SAMPLING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v >= 0, "of at least 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
}


def _check_sampling(body: dict[str, Any]) -> None:
    for name, (valid, rule) in _SAMPLING_RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not valid(value):
            raise ApiError(400, f"{name} must be a number {rule}, got {value!r}.", param=name)
    stop = body.get("stop")
    if not (stop is None or isinstance(stop, str) or _is_str_list(stop)):
        raise ApiError(400, "stop must be a string or a list of strings", param="stop")
    seed = body.get("seed")
    if seed is not None and not _is_int(seed):
        raise ApiError(400, f"seed must be an integer, got {seed!r}.", param="seed")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _chat_tokens(messages: object, chars_per_token: float) -> int:
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: Field required (a non-empty list)", param="messages")
    tokens = _TOKENS_PER_CHAT
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, "each message must be an object with a role", param="messages")
        content = message.get("content")
        if isinstance(content, list):  # content parts; only text parts count
            content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        text = content if isinstance(content, str) else ""
        tokens += _TOKENS_PER_MESSAGE + (count_tokens(text, chars_per_token) if text else 0)
    return tokens


def _completion_tokens(prompt: object, chars_per_token: float) -> list[int]:
    """A string, token ids, or a batch of either: one token count per prompt."""
    if isinstance(prompt, str):
        return [count_tokens(prompt, chars_per_token)]
    if isinstance(prompt, list) and prompt:
        if all(_is_int(t) for t in prompt):
            return [len(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [count_tokens(p, chars_per_token) for p in prompt]
        if all(isinstance(p, list) and p and all(_is_int(t) for t in p) for p in prompt):
            return [len(p) for p in prompt]
    raise ApiError(400, "prompt: Field required (a string or a list of strings)", param="prompt")


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
