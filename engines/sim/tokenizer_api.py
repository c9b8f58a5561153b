"""vLLM's tokenizer endpoints (``/tokenize``, ``/detokenize``) and the Messages API's
``/v1/messages/count_tokens``, as 0.32 answers them. They run on vLLM's API server, not
in the engine's batch, so they take no step here either.

There is no tokenizer: a text is ``count_tokens`` tokens (a chat counted as the chat
endpoint counts it), numbered from 0, and every token id reads back as ``TOKEN_TEXT``.
"""

from __future__ import annotations

from typing import Any

from .messages_api import parse_message
from .openai_api import TOKEN_TEXT
from .validation import ApiError, chat_tokens, count_tokens, is_int, served_model


def tokenize(
    body: dict[str, Any], models: list[str], chars_per_token: float, max_model_len: int
) -> dict[str, Any]:
    """A ``prompt`` text, or a chat's ``messages``: its token count and ids."""
    served_model(body, models)
    if "messages" in body:
        count = chat_tokens(body["messages"], chars_per_token)
    elif isinstance(body.get("prompt"), str):
        count = count_tokens(body["prompt"], chars_per_token)
    else:
        raise ApiError(400, "prompt (a string) or messages is required", param="prompt")
    return {
        "count": count,
        "max_model_len": max_model_len,
        "tokens": list(range(count)),
        "token_strs": None,
    }


def detokenize(body: dict[str, Any], models: list[str]) -> dict[str, Any]:
    served_model(body, models)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(is_int(t) and t >= 0 for t in tokens):
        raise ApiError(400, "tokens must be a list of token ids", param="tokens")
    return {"prompt": TOKEN_TEXT * len(tokens)}


def count_message_tokens(
    body: dict[str, Any], models: list[str], chars_per_token: float
) -> dict[str, Any]:
    """The ``input_tokens`` a Messages request with this body would have."""
    gen = parse_message({**body, "max_tokens": 1, "stream": False}, models, chars_per_token)
    return {"input_tokens": gen.prompt_tokens[0]}
