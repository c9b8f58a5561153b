"""What the ext_proc service learns about one request, as a plain object.

Envoy's ``json_to_metadata`` filter parses the body in C++ and hands the fields Fairlane
needs (model, max_tokens, stream, ...) to ext_proc as metadata, so the Python side never
sees or parses the body and one gRPC round trip decides the request.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from fairlane.envoy.common import (
    MESSAGES_PATH,
    POOLING_PATHS,
    REQUEST_ID_HEADER,
    RESPONSES_PATH,
    TOKENIZER_PATHS,
    on_messages_api,
)
from fairlane.extproc.client_certificate import XFCC_HEADER, certificate_names
from fairlane.lax import lax_bool

# The metadata namespace the bootstrap's json_to_metadata rules write into.
REQUEST_NAMESPACE = "fairlane.request"
# Marker values json_to_metadata writes when the body is not JSON / has no model.
JSON_ERROR_KEY = "json_error"
MODEL_MISSING_KEY = "model_missing"
# The Content-Encoding the client sent, kept before Envoy's decompressors remove theirs.
SENT_ENCODING_KEY = "content_encoding"
# The prompts envoy/prompts.lua counted in a completions batch (absent: one).
PROMPTS_KEY = "prompts"
# The media envoy/media.lua found in a chat, and their bytes (absent: none).
MEDIA_ITEMS_KEY = "media_items"
MEDIA_BYTES_KEY = "media_bytes"


class Api(StrEnum):
    """Which OpenAI API a request is for: it says where the body keeps its fields."""

    CHAT_OR_COMPLETIONS = "chat_or_completions"  # max_tokens, n, best_of
    RESPONSES = "responses"  # max_output_tokens; one sequence
    POOLING = "pooling"  # embeddings, rerank, score...: nothing generated; a sequence per item
    MESSAGES = "messages"  # Anthropic's: max_tokens (required); one sequence
    TOKENIZER = "tokenizer"  # /tokenize and the like: no sequence at all


_API_BY_PATH = {
    RESPONSES_PATH: Api.RESPONSES,
    MESSAGES_PATH: Api.MESSAGES,
    **dict.fromkeys(POOLING_PATHS, Api.POOLING),
    **dict.fromkeys(TOKENIZER_PATHS, Api.TOKENIZER),
}


@dataclass(frozen=True, slots=True)
class RequestInfo:
    api: Api
    anthropic: bool  # on Anthropic's API (/v1/messages...): its error shape
    tenant_header: str | None
    authorization: str | None
    api_key: str | None  # x-api-key: where Anthropic's SDKs send the key
    client_names: tuple[str, ...]  # in the client's certificate (mutual TLS), else ()
    content_length: int
    content_encoding: str | None  # one Envoy's decompressors left (they remove theirs)
    sent_encoding: str | None  # the whole header the client sent (its 415 names it)
    body_is_json: bool  # a compressed body that decompressed to nothing is not
    model: Any  # whatever JSON value the client sent; validated by the pipeline
    max_tokens: Any
    choices: Any  # `n`: sequences the engine generates per prompt
    best_of: Any  # legacy completions: sequences generated to return `n`
    prompts: Any  # a completions batch: prompts in its `prompt` list (None: one)
    media_items: int  # a chat's images, audio and video, linked or inline (base64)
    media_bytes: int  # the body bytes they take
    stream: bool
    background: bool  # a Responses request vLLM would answer at once, then run on its own
    declared_json: bool  # content-type says JSON (curl -d sends a form type)
    request_id: str  # Envoy's unique id of the request ("" where it has none)


def combined_headers(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Headers by lower-case name. One sent twice reads as its values joined, as HTTP
    combines them, so a second X-Tenant-ID or API key makes the request invalid instead
    of one of them silently winning."""
    headers: dict[str, str] = {}
    for name, value in pairs:
        key = name.lower()
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    return headers


def request_info(headers: dict[str, str], fields: dict[str, Any]) -> RequestInfo:
    """Build a RequestInfo from forwarded headers and the json_to_metadata fields."""
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        length = 0
    path = headers.get(":path", "").partition("?")[0]
    api = _API_BY_PATH.get(path, Api.CHAT_OR_COMPLETIONS)
    # Only the API's own fields count: the engine ignores the others', so a client
    # could otherwise lower its estimate with a field that limits nothing.
    if api is Api.RESPONSES:
        max_tokens, choices, best_of = fields.get("max_output_tokens"), None, None
    elif api in (Api.POOLING, Api.TOKENIZER):
        max_tokens, choices, best_of = None, None, None
    elif api is Api.MESSAGES:
        max_tokens, choices, best_of = fields.get("max_tokens"), None, None
    else:
        # vLLM takes max_completion_tokens unless it is null (an object or list: its 400).
        max_tokens = fields.get("max_completion_tokens")
        if not isinstance(max_tokens, str | int | float):
            max_tokens = fields.get("max_tokens")
        choices, best_of = fields.get("n"), fields.get("best_of")
    sent = fields.get(SENT_ENCODING_KEY)
    sent_encoding = sent if isinstance(sent, str) else headers.get("content-encoding")
    # A decompressor that cannot undo a body (not in the encoding it names, or cut short
    # before its first byte) passes on nothing: json_to_metadata then sees no `model`.
    undecompressed = length == 0 and is_encoded(sent_encoding)
    return RequestInfo(
        api=api,
        anthropic=on_messages_api(path),
        tenant_header=headers.get("x-tenant-id"),
        authorization=headers.get("authorization"),
        api_key=headers.get("x-api-key"),
        client_names=certificate_names(headers.get(XFCC_HEADER)),
        content_length=length,
        content_encoding=headers.get("content-encoding"),
        sent_encoding=sent_encoding,
        body_is_json=not fields.get(JSON_ERROR_KEY) and not undecompressed,
        model=None if fields.get(MODEL_MISSING_KEY) else fields.get("model"),
        max_tokens=max_tokens,
        choices=choices,
        best_of=best_of,
        prompts=fields.get(PROMPTS_KEY),
        media_items=_count(fields.get(MEDIA_ITEMS_KEY)),
        media_bytes=_count(fields.get(MEDIA_BYTES_KEY)),
        stream=lax_bool(fields.get("stream")) is True,
        background=api is Api.RESPONSES and lax_bool(fields.get("background")) is True,
        declared_json=headers.get("content-type", "").startswith("application/json"),
        request_id=headers.get(REQUEST_ID_HEADER, ""),
    )


def is_encoded(content_encoding: str | None) -> bool:
    """Whether a Content-Encoding header names an encoding (`identity` is none)."""
    return (content_encoding or "").strip().lower() not in ("", "identity")


def _count(value: Any) -> int:
    """A count the Lua filters wrote (a number), 0 when absent."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
    return int(value) if ok else 0
