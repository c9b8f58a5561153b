"""Chat and completions response shapes, as vLLM's OpenAI server writes them.

The output is always exactly ``max_tokens`` tokens of ``TOKEN_TEXT`` (as if every
request set ``ignore_eos``), so benchmarks get exact, reproducible lengths.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .validation import MAX_LOGPROBS, ApiError, GenerationRequest

TOKEN_TEXT = " tok"
# Each step's distribution, the same at every step: TOKEN_TEXT (sampled greedily) first,
# then the runners-up, with probabilities halving down the list.
_CANDIDATES = (TOKEN_TEXT, " the", " a", " and", " to", " of", " in", " is", " that", " it",
               " for", " on", " with", " as", " was", " I", " be", " at", " by", " this",
               " not")  # fmt: skip
_LOGPROBS = tuple(round(math.log(0.5 ** (rank + 1)), 4) for rank in range(len(_CANDIDATES)))
assert len(_CANDIDATES) == MAX_LOGPROBS + 1


def _chat_candidate(rank: int) -> dict[str, Any]:
    token = _CANDIDATES[rank]
    return {"token": token, "logprob": _LOGPROBS[rank], "bytes": list(token.encode())}


def chat_logprobs(tokens: int, top: int) -> dict[str, Any]:
    """A chat choice's ``logprobs`` for ``tokens`` tokens, ``top`` runners-up each."""
    entry = {**_chat_candidate(0), "top_logprobs": [_chat_candidate(r) for r in range(top)]}
    return {"content": [entry] * tokens}


def completion_logprobs(tokens: int, top: int, offset: int) -> dict[str, Any]:
    """A completion choice's ``logprobs`` for ``tokens`` tokens starting at text
    ``offset``; vLLM's top dict always holds the sampled token, so it has max(top, 1)."""
    top_dict = {_CANDIDATES[r]: _LOGPROBS[r] for r in range(max(top, 1))}
    return {
        "text_offset": [offset + i * len(TOKEN_TEXT) for i in range(tokens)],
        "token_logprobs": [_LOGPROBS[0]] * tokens,
        "tokens": [TOKEN_TEXT] * tokens,
        "top_logprobs": [top_dict] * tokens,
    }


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class StreamChunks:
    """The SSE chunks of one choice, encoded once per request: every token's chunk is the
    same bytes, so writing a token costs a bytes concatenation, not a JSON encode."""

    def __init__(self, gen: GenerationRequest, request_id: str, created: int, index: int) -> None:
        self._head: dict[str, Any] = {
            "id": request_id,
            "object": "chat.completion.chunk" if gen.kind == "chat" else "text_completion",
            "created": created,
            "model": gen.model,
        }
        self._index = index
        self._top_logprobs = gen.top_logprobs
        # A completion's logprobs carry each token's text offset, so only its chunks
        # differ from token to token; they are encoded per token (when asked for).
        self._per_token = gen.kind != "chat" and gen.top_logprobs is not None
        if gen.kind == "chat":
            self.first = self._choice(None, {"role": "assistant", "content": ""}, None)
            lp = None if gen.top_logprobs is None else chat_logprobs(1, gen.top_logprobs)
            self.token = self._choice(lp, {"content": TOKEN_TEXT}, None)
            self.last = self._choice(lp, {"content": TOKEN_TEXT}, "length")
        else:
            self.first = b""
            self.token = self._completion_choice(None, None)
            self.last = self._completion_choice(None, "length")

    def _choice(self, lp: object, delta: dict[str, str], finish: str | None) -> bytes:
        choice = {"index": self._index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        if finish is not None:
            choice["stop_reason"] = None
        return _sse({**self._head, "choices": [choice]})

    def _completion_choice(self, lp: object, finish: str | None) -> bytes:
        choice = {"index": self._index, "text": TOKEN_TEXT, "logprobs": lp}
        choice.update(finish_reason=finish, stop_reason=None)
        return _sse({**self._head, "choices": [choice]})

    def _completion_token(self, position: int, last: bool) -> bytes:
        """The chunk of the token at ``position`` (0-based) with its logprobs."""
        assert self._top_logprobs is not None
        offset = position * len(TOKEN_TEXT)
        lp = completion_logprobs(1, self._top_logprobs, offset)
        return self._completion_choice(lp, "length" if last else None)

    def step(self, sent: int, new: int, max_tokens: int, prompt_tokens: int | None) -> bytes:
        """The chunks of tokens ``sent + 1`` to ``sent + new``, the first one's role delta
        before them; with ``prompt_tokens`` each carries the choice's running usage, as
        vLLM writes it under ``continuous_usage_stats``."""
        done = sent + new
        if self._per_token:
            tokens = [self._completion_token(p, p + 1 == max_tokens) for p in range(sent, done)]
        else:
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
    top = gen.top_logprobs
    choices: list[dict[str, Any]]
    if gen.kind == "chat":
        message = {"role": "assistant", "content": text, "tool_calls": []}
        lp = None if top is None else chat_logprobs(gen.max_tokens, top)
        choices = [{"index": i, "message": message, "logprobs": lp} for i in range(gen.n)]
    else:
        count = len(gen.prompt_tokens) * gen.n
        lp = None if top is None else completion_logprobs(gen.max_tokens, top, 0)
        choices = [{"index": i, "text": text, "logprobs": lp} for i in range(count)]
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
