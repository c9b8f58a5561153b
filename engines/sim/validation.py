"""Request validation for the simulator's OpenAI endpoints, with vLLM's rules and errors.

There is no tokenizer: prompt length is estimated from characters (a chat's messages
with the Llama-3 template's tokens around them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from fairlane.lax import lax_bool, lax_int

# The simulator's answer when a request leaves out max_tokens. vLLM would generate up to
# the context limit (until EOS); with no EOS here that would be tens of thousands of
# tokens, so a typical chat answer length is used instead.
DEFAULT_MAX_TOKENS = 128
# Choices per prompt: OpenAI's own limit (vLLM's is 16,384; each choice is a sequence).
MAX_N = 128
# vLLM's default --max-logprobs; -1 asks for the whole vocabulary (Llama-3's 128,256).
MAX_LOGPROBS = 20
_VOCAB_SIZE = 128_256
# Llama-3 chat template: per message <|start_header_id|>role<|end_header_id|>\n\n ...
# <|eot_id|>; per prompt <|begin_of_text|> plus the assistant header that opens the answer.
_TOKENS_PER_MESSAGE = 4
_TOKENS_PER_CHAT = 4

Kind = Literal[
    "chat", "completion", "response", "embedding", "message", "rerank", "score", "classify",
    "pooling",
]  # fmt: skip
# Kinds that generate nothing: each prompt is prefilled and done.
POOLING_KINDS = ("embedding", "rerank", "score", "classify", "pooling")
ENCODINGS = ("float", "base64")  # an embedding's `encoding_format`


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
    top_logprobs: int | None = None  # runners-up per token in the logprobs; None: none
    base64: bool = False  # an embedding's encoding_format
    documents: tuple[str, ...] = ()  # a rerank's, echoed in its results
    top_n: int = 0  # a rerank's results kept (0: all)


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
    """Validate a chat, completions or Responses body (unknown fields are ignored, like
    vLLM)."""
    model = served_model(body, models)
    max_name = "max_tokens"
    if kind == "chat":
        prompts = [chat_tokens(body.get("messages"), chars_per_token)]
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
    elif kind == "response":
        prompts = [_response_input_tokens(body, chars_per_token)]
        max_name = "max_output_tokens"
        max_tokens = body.get(max_name)
    else:
        prompts = _completion_tokens(body.get("prompt"), chars_per_token, "prompt")
        max_tokens = body.get("max_tokens")
    # Read as vLLM's pydantic models read them: "64" is 64, "yes" is true.
    count = DEFAULT_MAX_TOKENS if max_tokens is None else lax_int(max_tokens)
    if count is None or count < 1:
        message = f"{max_name} must be an integer of at least 1, got {max_tokens!r}."
        raise ApiError(400, message, param=max_name)
    # The Responses API has neither `n` nor `stream_options`: vLLM ignores them there.
    sent_n = 1 if kind == "response" else body.get("n")
    n = 1 if sent_n is None else lax_int(sent_n)
    if n is None or not 1 <= n <= MAX_N:
        raise ApiError(400, f"n must be an integer from 1 to {MAX_N}, got {sent_n!r}.", param="n")
    stream = flag_field(body, "stream")
    options = None if kind == "response" else body.get("stream_options")
    if options is not None and not stream:
        raise ApiError(400, "Stream options can only be defined when `stream=True`.")
    if not isinstance(options, dict):
        options = {}
    include_usage = options.get("include_usage") is True
    continuous = include_usage and options.get("continuous_usage_stats") is True
    check_sampling(body)
    return GenerationRequest(
        kind, model, prompts, n, count, stream, include_usage, continuous,
        priority_field(body), logprobs_field(kind, body),
    )  # fmt: skip


def flag_field(body: dict[str, Any], name: str) -> bool:
    """A bool field as vLLM reads it: absent or null is false, "yes" true."""
    flag = lax_bool(body.get(name) or False)
    if flag is None:
        raise ApiError(400, f"{name} must be a boolean, got {body[name]!r}.", param=name)
    return flag


def logprobs_field(kind: Kind, body: dict[str, Any]) -> int | None:
    """How many runners-up each token's logprobs list (None: no logprobs), by vLLM's
    rules: chat asks with ``logprobs: true`` and ``top_logprobs``, completions with an
    integer ``logprobs``; the Responses API's are not simulated."""
    if kind == "chat":
        wanted = flag_field(body, "logprobs")
        name, count = "top_logprobs", body.get("top_logprobs")
        if count is not None and count != 0 and not wanted:
            message = "when using `top_logprobs`, `logprobs` must be set to true."
            raise ApiError(400, message, param=name)
        if not wanted:
            return None
    elif kind == "completion":
        name, count = "logprobs", body.get("logprobs")
        if count is None:
            return None
    else:
        return None
    if count is None:
        count = 0
    if not isinstance(count, int):  # vLLM takes a bool as 0 or 1
        raise ApiError(400, f"`{name}` must be an integer.", param=name)
    if count < -1:
        raise ApiError(400, f"`{name}` must be a positive value or -1.", param=name)
    requested = _VOCAB_SIZE if count == -1 else int(count)
    if requested > MAX_LOGPROBS:
        message = (
            f"Requested sample logprobs of {requested}, "
            f"which is greater than max allowed: {MAX_LOGPROBS}"
        )
        raise ApiError(400, message, param="logprobs")
    return requested


def parse_embedding(
    body: dict[str, Any], models: list[str], chars_per_token: float
) -> GenerationRequest:
    """Validate a /v1/embeddings body: ``input`` as a completions ``prompt`` (each item
    pooled on its own), or vLLM's chat form, ``messages`` (one); no tokens are generated
    (``max_tokens`` 0), nothing streams."""
    model = served_model(body, models)
    if "input" not in body and "messages" in body:
        prompts = [chat_tokens(body["messages"], chars_per_token)]
    else:
        prompts = _completion_tokens(body.get("input"), chars_per_token, "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ENCODINGS:
        message = f"encoding_format must be one of {', '.join(ENCODINGS)}, got {encoding!r}."
        raise ApiError(400, message, param="encoding_format")
    return GenerationRequest(
        "embedding", model, prompts, 1, 0, False, False, False, priority_field(body),
        base64=encoding == "base64",
    )  # fmt: skip


def served_model(body: dict[str, Any], models: list[str]) -> str:
    model = body.get("model", models[0])
    if model not in models:
        raise ApiError(404, f"The model `{model}` does not exist.", "NotFoundError", "model")
    return str(model)


def priority_field(body: dict[str, Any]) -> int | None:
    priority = body.get("priority")
    if priority is None:
        return None
    if not is_int(priority):
        raise ApiError(400, "priority must be an integer", param="priority")
    return int(priority)


# The sampling parameters a client most often gets wrong, with vLLM's bounds. The
# simulator ignores their values, but a request vLLM would refuse is refused here too.
_SAMPLING_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "temperature": (lambda v: v >= 0, "of at least 0"),
    "top_p": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "in [-2, 2]"),
}


def check_sampling(body: dict[str, Any]) -> None:
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
    if seed is not None and not is_int(seed):
        raise ApiError(400, f"seed must be an integer, got {seed!r}.", param="seed")


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def chat_tokens(messages: object, chars_per_token: float) -> int:
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


def _response_input_tokens(body: dict[str, Any], chars_per_token: float) -> int:
    """A Responses ``input``: a text or a list of items (messages, and tool outputs
    under ``output`` with no role), after ``instructions`` as a system message;
    counted as a chat."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise ApiError(400, "input: Field required (a string or a non-empty list)", param="input")
    if not all(isinstance(item, dict) for item in items):
        raise ApiError(400, "each input item must be an object", param="input")
    instructions = body.get("instructions")
    messages = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        content = item.get("content", item.get("output"))
        messages.append({"role": str(item.get("role", "tool")), "content": content})
    return chat_tokens(messages, chars_per_token)


def _completion_tokens(prompt: object, chars_per_token: float, field: str) -> list[int]:
    """A string, token ids, or a batch of either: one token count per prompt."""
    if isinstance(prompt, str):
        return [count_tokens(prompt, chars_per_token)]
    if isinstance(prompt, list) and prompt:
        if all(is_int(t) for t in prompt):
            return [len(prompt)]
        if all(isinstance(p, str) for p in prompt):
            return [count_tokens(p, chars_per_token) for p in prompt]
        if all(isinstance(p, list) and p and all(is_int(t) for t in p) for p in prompt):
            return [len(p) for p in prompt]
    message = f"{field}: Field required (a string or a list of strings)"
    raise ApiError(400, message, param=field)
