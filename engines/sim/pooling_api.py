"""vLLM's pooling APIs as 0.32 serves them for a model that supports them (the
simulator answers them for any): ``/v1/embeddings`` (parsed in ``validation.py``), a
cross-encoder's rerank (``/rerank``, ``/v1/rerank``, ``/v2/rerank``) and score
(``/score``, ``/v1/score``), a classifier's ``/classify``, and raw ``/pooling``.

Each input, (query, document) or (text, text) pair is a sequence of its own, prefilled
and then done; nothing is generated. With no model there is nothing to embed or rank:
every vector is the same unit vector of ``EMBEDDING_DIMENSIONS``, every pair scores
``SCORE``, every input is ``LABEL``.
"""

from __future__ import annotations

import base64
import math
import struct
from dataclasses import replace
from typing import Any

from .openai_api import usage
from .validation import (
    ApiError,
    GenerationRequest,
    Kind,
    count_tokens,
    is_int,
    parse_embedding,
    priority_field,
    served_model,
)

EMBEDDING_DIMENSIONS = 16
EMBEDDING_VALUE = 1 / math.sqrt(EMBEDDING_DIMENSIONS)
SCORE = 0.5
LABEL = "LABEL_0"
# A score's two sides, by the names its request forms give them.
_SCORE_SIDES = (("text_1", "text_2"), ("data_1", "data_2"), ("queries", "documents"),
                ("queries", "items"))  # fmt: skip


def parse_pooling(
    kind: Kind, body: dict[str, Any], models: list[str], chars_per_token: float
) -> GenerationRequest:
    """Validate a rerank, score, classify or pooling body (unknown fields are ignored)."""
    if kind in ("classify", "pooling"):  # an `input` as embeddings take it
        return replace(parse_embedding(body, models, chars_per_token), kind=kind)
    model = served_model(body, models)
    if kind == "rerank":
        query = _texts(body.get("query"), "query")
        if len(query) != 1:
            raise ApiError(400, "query must be a string", param="query")
        documents = _texts(body.get("documents"), "documents")
        left, right = query * len(documents), documents
        top_n = body.get("top_n", 0)
        if not is_int(top_n) or top_n < 0:
            raise ApiError(400, f"top_n must be an integer of at least 0, got {top_n!r}.")
    else:
        names = next((n for n in _SCORE_SIDES if n[0] in body and n[1] in body), None)
        if names is None:
            message = "text_1 and text_2 are required (or data_1 and data_2, queries and documents)"
            raise ApiError(400, message, param="text_1")
        left, right = (_texts(body[name], name) for name in names)
        if len(left) == 1:
            left = left * len(right)
        elif len(right) != len(left):
            message = f"{names[0]} must hold one item or as many as {names[1]}"
            raise ApiError(400, message, param=names[0])
        documents, top_n = [], 0
    prompts = [
        count_tokens(a, chars_per_token) + count_tokens(b, chars_per_token)
        for a, b in zip(left, right, strict=True)
    ]
    return GenerationRequest(
        kind, model, prompts, 1, 0, False, False, False, priority_field(body),
        documents=tuple(documents), top_n=top_n,
    )  # fmt: skip


def _texts(value: object, field: str) -> list[str]:
    """A text or a non-empty list of texts."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    raise ApiError(
        400, f"{field}: a string or a non-empty list of strings is required", param=field
    )


def pooling_response(gen: GenerationRequest, request_id: str, created: int) -> dict[str, Any]:
    """The answer, in the shape of vLLM's API for ``gen.kind``."""
    prompt_tokens = sum(gen.prompt_tokens)
    items = range(len(gen.prompt_tokens))
    if gen.kind == "rerank":
        results = [
            {"index": i, "document": {"text": text, "multi_modal": None}, "relevance_score": SCORE}
            for i, text in enumerate(gen.documents)
        ]
        return {
            "id": request_id,
            "model": gen.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
            "results": results[: gen.top_n] if gen.top_n else results,
        }
    data: list[dict[str, Any]]
    vector = [EMBEDDING_VALUE] * EMBEDDING_DIMENSIONS
    if gen.kind == "embedding":
        encoded: list[float] | str = vector
        if gen.base64:  # little-endian float32, as vLLM encodes it
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data = [{"object": "embedding", "index": i, "embedding": encoded} for i in items]
    elif gen.kind == "score":
        data = [{"index": i, "object": "score", "score": SCORE} for i in items]
    elif gen.kind == "classify":
        data = [{"index": i, "label": LABEL, "probs": [1.0], "num_classes": 1} for i in items]
    else:
        data = [{"index": i, "object": "pooling", "data": vector} for i in items]
    return {
        "id": request_id,
        "object": "list",
        "created": created,
        "model": gen.model,
        "data": data,
        "usage": usage(prompt_tokens, 0),
    }
