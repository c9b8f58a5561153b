"""The worker's small HTTP side: /health, /v1/models[/{model}], /metrics and /status.

Envoy routes the first three from the public listener; /status is for `fairlane status`
on the loopback control port only.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fairlane.extproc.errors import Reason, Rejection, error_body, model_not_found
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.observe import snapshot
from fairlane.extproc.pipeline import visible_models
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import combined_headers, request_info

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def build_control_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/v1/models/{model:.+}", model)  # ids may hold a slash: org/name
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    return app


def missing_models(gateway: Gateway) -> list[str]:
    runtime = gateway.runtime
    return sorted(
        model
        for model, pool in runtime.model_to_pool.items()
        if pool not in gateway.pools or gateway.pools[pool].state is not EngineState.UP
    )


async def health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    missing = missing_models(gateway)
    engines = {
        replica.name: replica.state.value
        for pool in gateway.pools.values()
        for replica in pool.replicas.values()
    }
    # Lazy engines load on the first request: their absence alone is not unhealthy.
    policy = gateway.runtime.policy
    down = [
        name
        for name, state in engines.items()
        if state != "up" and name in policy.engines and not policy.engines[name].lazy
    ]
    body: dict[str, object] = {
        "status": "unavailable" if down else "ok",
        "missing_models": missing,
        "engines": engines,
        "config_generation": gateway.runtime.generation,
    }
    if gateway.shared_limiter is not None and gateway.counter_sync is not None:
        # Degraded, not down: each gateway then serves on its own state.
        body["shared_state"] = {
            "limits": "up" if gateway.shared_limiter.available else "unavailable",
            "counters": "up" if gateway.counter_sync.available else "unavailable",
        }
    return web.json_response(body, status=503 if down else 200)


def _model_card(gateway: Gateway, model: str, created: int) -> dict[str, object]:
    pool = gateway.runtime.model_to_pool[model]
    card: dict[str, object] = {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "fairlane",
        "engines": list(gateway.runtime.pools[pool]),
    }
    engine = gateway.runtime.pool_config(pool)
    if model in engine.adapters:  # as vLLM lists a LoRA adapter: on top of its base model
        card["parent"] = engine.models[0]
    return card


def _visible(request: web.Request) -> list[str] | Rejection:
    """The models this caller may use, identified by its key or X-Tenant-ID."""
    info = request_info(combined_headers(request.headers.items()), {})
    return visible_models(info, request.app[GATEWAY_KEY].runtime)


def _error(rejection: Rejection) -> web.Response:
    body = error_body(rejection.reason, rejection.message)
    return web.Response(status=rejection.reason.status, body=body, headers=rejection.headers())


async def models(request: web.Request) -> web.Response:
    visible = _visible(request)
    if isinstance(visible, Rejection):
        return _error(visible)
    gateway, created = request.app[GATEWAY_KEY], int(time.time())
    data = [_model_card(gateway, m, created) for m in visible]
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: the OpenAI SDK's `models.retrieve`. A model the caller
    may not use is as unknown as one that does not exist."""
    visible, name = _visible(request), request.match_info["model"]
    if isinstance(visible, Rejection):
        return _error(visible)
    if name not in visible:
        return _error(Rejection(Reason.MODEL_NOT_FOUND, model_not_found(name)))
    return web.json_response(_model_card(request.app[GATEWAY_KEY], name, int(time.time())))


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    body = generate_latest(gateway.metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    return web.json_response(snapshot(gateway))
