"""The simulator's OpenAI-compatible HTTP server (vLLM's endpoints, shapes and metrics)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web
from prometheus_client import generate_latest

from .engine import EngineOverloaded, SimEngine, SimRequest
from .messages_api import MessageEvents, message_object, message_usage, parse_message
from .messages_api import error_body as message_error_body
from .metrics import build_registry
from .openai_api import TOKEN_TEXT, full_response
from .pooling_api import parse_pooling, pooling_response
from .presets import SimPreset
from .responses_api import ResponseEvents, response_object, response_usage
from .streams import engine_gone, stream_chunks, stream_events
from .tokenizer_api import count_message_tokens, detokenize, tokenize
from .validation import (
    POOLING_KINDS,
    ApiError,
    GenerationRequest,
    Kind,
    parse_body,
    parse_embedding,
    parse_generation,
)

# The text format generate_latest() writes, whatever newer format prometheus_client
# would advertise by default.
_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_MAX_BODY_BYTES = 32 * 1024 * 1024
PRIORITY_HEADER = "X-Vllm-Priority"
_GENERATION_PATHS: dict[str, Kind] = {
    "/v1/chat/completions": "chat", "/v1/completions": "completion",
    "/v1/responses": "response", "/v1/embeddings": "embedding", "/v1/messages": "message",
    "/rerank": "rerank", "/v1/rerank": "rerank", "/v2/rerank": "rerank",
    "/score": "score", "/v1/score": "score", "/classify": "classify", "/pooling": "pooling",
}  # fmt: skip
_ID_PREFIX: dict[Kind, str] = {
    "chat": "chatcmpl-", "completion": "cmpl-", "response": "resp_", "embedding": "embd-",
    "message": "msg_", "rerank": "score-", "score": "score-", "classify": "classify-",
    "pooling": "pooling-",
}  # fmt: skip


class _Api:
    """Request handlers bound to one engine."""

    def __init__(self, engine: SimEngine, models: list[str], preset: SimPreset) -> None:
        self._engine = engine
        self._models = models
        self._preset = preset
        self._registry, self._priority_requests = build_registry(engine, models[0])
        self._created = int(time.time())

    def generation(self, kind: Kind) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """The handler of one API."""

        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, kind)

        return handle

    async def tokenizer(self, request: web.Request) -> web.Response:
        """/tokenize, /detokenize and the Messages API's count_tokens."""
        path = request.path
        try:
            body = parse_body(await request.read())
            cpt = self._preset.chars_per_token
            if path == "/tokenize":
                answer = tokenize(body, self._models, cpt, self._preset.max_model_len)
            elif path == "/detokenize":
                answer = detokenize(body, self._models)
            else:
                answer = count_message_tokens(body, self._models, cpt)
        except ApiError as exc:
            return _error_response("message" if path.startswith("/v1/messages") else "chat", exc)
        return web.json_response(answer)

    async def models(self, request: web.Request) -> web.Response:
        data: list[dict[str, object]] = [
            {
                "id": model,
                "object": "model",
                "created": self._created,
                "owned_by": "fairlane-sim",
                "root": model,
                "parent": None,
                "max_model_len": self._preset.max_model_len,
                "permission": [],
            }
            for model in self._models
        ]
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": _METRICS_CONTENT_TYPE})

    async def _generate(self, request: web.Request, kind: Kind) -> web.StreamResponse:
        try:
            body = parse_body(await request.read())
            cpt = self._preset.chars_per_token
            if kind == "embedding":
                gen = parse_embedding(body, self._models, cpt)
            elif kind == "message":
                gen = parse_message(body, self._models, cpt)
            elif kind in POOLING_KINDS:
                gen = parse_pooling(kind, body, self._models, cpt)
            else:
                gen = parse_generation(kind, body, self._models, cpt)
            from_header = _header_priority(request)
            if from_header is not None:
                gen = replace(gen, priority=from_header)
            reqs = self._submit(gen)
        except ApiError as exc:
            return _error_response(kind, exc)
        headers: dict[str, str] = {}
        if gen.priority is not None:
            self._priority_requests.inc()
            headers["x-sim-priority"] = str(gen.priority)
            headers["x-sim-priority-from"] = "body" if from_header is None else "header"
        request_id = _ID_PREFIX[kind] + uuid.uuid4().hex
        try:
            if gen.stream and kind == "response":
                events = ResponseEvents(gen, request_id, int(time.time()))
                return await stream_events(request, reqs[0], events, headers)
            if gen.stream and kind == "message":
                messages = MessageEvents(gen, request_id, reqs[0].prompt_tokens)
                return await stream_events(request, reqs[0], messages, headers)
            if gen.stream:
                return await stream_chunks(request, gen, reqs, request_id, headers)
            return await self._complete(gen, reqs, request_id, headers)
        finally:
            # Client gone (write error or handler cancelled) or engine stall: free the
            # slots. A no-op for requests that finished.
            for req in reqs:
                req.abort()

    def _submit(self, gen: GenerationRequest) -> list[SimRequest]:
        reqs: list[SimRequest] = []
        try:
            # One sequence per choice, prompt-major: list position is the choice index.
            for prompt_tokens in gen.prompt_tokens:
                for _ in range(gen.n):
                    reqs.append(
                        self._engine.submit(prompt_tokens, gen.max_tokens, gen.priority or 0)
                    )
        except (ValueError, EngineOverloaded) as exc:
            for req in reqs:
                req.abort()
            if isinstance(exc, EngineOverloaded):
                raise ApiError(503, str(exc), "ServiceUnavailableError") from None
            raise ApiError(400, str(exc)) from None
        return reqs

    async def _complete(
        self,
        gen: GenerationRequest,
        reqs: list[SimRequest],
        request_id: str,
        headers: dict[str, str],
    ) -> web.Response:
        try:
            for req in reqs:
                async for _ in req:
                    pass
                if req.finish_reason != "length":
                    raise engine_gone()
        except TimeoutError as exc:
            return _error_response(gen.kind, ApiError(500, str(exc), "InternalServerError"))
        except ApiError as exc:
            return _error_response(gen.kind, exc)
        completion_tokens = sum(req.generated for req in reqs)
        created = int(time.time())
        if gen.kind in POOLING_KINDS:
            body = pooling_response(gen, request_id, created)
        elif gen.kind == "message":
            usage = message_usage(sum(gen.prompt_tokens), completion_tokens)
            body = message_object(gen, request_id, TOKEN_TEXT * completion_tokens, usage)
        elif gen.kind == "response":
            usage = response_usage(sum(gen.prompt_tokens), completion_tokens)
            text = TOKEN_TEXT * completion_tokens
            body = response_object(gen, request_id, created, text, usage)
        else:
            body = full_response(gen, request_id, created, completion_tokens)
        return web.json_response(body, headers=headers)


def _error_response(kind: Kind, error: ApiError) -> web.Response:
    body = message_error_body(error) if kind == "message" else error.body()
    return web.json_response(body, status=error.status)


def build_app(engine: SimEngine, models: list[str], preset: SimPreset) -> web.Application:
    """The HTTP app for a started (or soon started) engine; ``models`` are the served
    names, the first one labels the metrics."""
    if not models:
        raise ValueError("at least one model name is required")
    api = _Api(engine, models, preset)
    app = web.Application(client_max_size=_MAX_BODY_BYTES)
    for path, kind in _GENERATION_PATHS.items():
        app.router.add_post(path, api.generation(kind))
    for path in ("/tokenize", "/detokenize", "/v1/messages/count_tokens"):
        app.router.add_post(path, api.tokenizer)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/health", api.health)
    app.router.add_get("/metrics", api.metrics)
    return app


def _header_priority(request: web.Request) -> int | None:
    """vLLM's rule: an integer ``X-Vllm-Priority`` header wins over the body's field."""
    try:
        return int(request.headers[PRIORITY_HEADER])
    except (KeyError, ValueError):
        return None
