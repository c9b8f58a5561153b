"""The worker's small HTTP side: /health, /v1/models[/{model}], /metrics and /status.

Envoy routes the first three from the public listener; /status is for `fairlane status`
on the loopback control port only.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fairlane.extproc.errors import Reason, error_body, model_not_found
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.observe import snapshot
from fairlane.extproc.replicas import EngineState

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
    return {
        "id": model,
        "object": "model",
        "created": created,
        "owned_by": "fairlane",
        "engines": list(gateway.runtime.pools[pool]),
    }


async def models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    created = int(time.time())
    data = [_model_card(gateway, m, created) for m in sorted(gateway.runtime.model_to_pool)]
    return web.json_response({"object": "list", "data": data})


async def model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: the OpenAI SDK's `models.retrieve`."""
    gateway = request.app[GATEWAY_KEY]
    name = request.match_info["model"]
    if name not in gateway.runtime.model_to_pool:
        reason = Reason.MODEL_NOT_FOUND
        body = error_body(reason, model_not_found(name))
        return web.Response(status=reason.status, body=body, content_type="application/json")
    return web.json_response(_model_card(gateway, name, int(time.time())))


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    body = generate_latest(gateway.metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    return web.json_response(snapshot(gateway))
