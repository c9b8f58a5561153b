"""The simulator's SSE writers: a chat or completions stream's chunks, a Responses
stream's events and a Messages stream's events, one write per engine step. A client that
leaves ends the writer; the handler aborts the requests."""

from __future__ import annotations

import time
from typing import Protocol

from aiohttp import web

from .engine import SimRequest
from .openai_api import StreamChunks, sse_error
from .validation import ApiError, GenerationRequest

_DONE = b"data: [DONE]\n\n"


def engine_gone() -> ApiError:
    return ApiError(
        503, "The engine stopped before the request finished.", "ServiceUnavailableError"
    )


async def _open_stream(request: web.Request, headers: dict[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", **headers}
    )
    await resp.prepare(request)
    return resp


async def stream_chunks(
    request: web.Request,
    gen: GenerationRequest,
    reqs: list[SimRequest],
    request_id: str,
    headers: dict[str, str],
) -> web.StreamResponse:
    resp = await _open_stream(request, headers)
    created = int(time.time())
    choices = [StreamChunks(gen, request_id, created, i) for i in range(len(reqs))]
    try:
        for chunks, req in zip(choices, reqs, strict=True):
            sent = 0
            running = req.prompt_tokens if gen.continuous_usage else None
            async for n in req:
                # One write per engine step; several tokens at once when we lag.
                await resp.write(chunks.step(sent, n, req.max_tokens, running))
                sent += n
            if req.finish_reason != "length":
                await resp.write(sse_error(engine_gone()) + _DONE)
                return resp
        if gen.include_usage:
            completion_tokens = sum(req.generated for req in reqs)
            await resp.write(choices[0].usage(sum(gen.prompt_tokens), completion_tokens))
        await resp.write(_DONE)
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left; _generate aborts the requests
    except TimeoutError as exc:
        await resp.write(sse_error(ApiError(500, str(exc), "InternalServerError")) + _DONE)
    return resp


class TypedEvents(Protocol):
    """A stream of typed SSE events (Responses, Messages): no ``[DONE]``, an ``error``
    event when the engine fails."""

    def opening(self) -> bytes: ...
    def deltas(self, new: int) -> bytes: ...
    def closing(self, generated: int, prompt_tokens: int) -> bytes: ...
    def error(self, error: ApiError) -> bytes: ...


async def stream_events(
    request: web.Request, req: SimRequest, events: TypedEvents, headers: dict[str, str]
) -> web.StreamResponse:
    """One request's events: the opening, its tokens' deltas one write per engine step,
    the closing (with the usage)."""
    resp = await _open_stream(request, headers)
    try:
        await resp.write(events.opening())
        async for n in req:
            await resp.write(events.deltas(n))
        if req.finish_reason != "length":
            await resp.write(events.error(engine_gone()))
            return resp
        await resp.write(events.closing(req.generated, req.prompt_tokens))
        await resp.write_eof()
    except ConnectionResetError:
        pass  # the client left; _generate aborts the request
    except TimeoutError as exc:
        await resp.write(events.error(ApiError(500, str(exc), "InternalServerError")))
    return resp
