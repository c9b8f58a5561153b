"""The worker's small HTTP side: /health, /v1/models, /metrics and /status.

Envoy routes the first three from the public listener; /status is for `fairlane status`
on the loopback control port only.
"""

from __future__ import annotations

import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from fairlane.extproc.gateway import Gateway
from fairlane.extproc.observe import snapshot
from fairlane.extproc.replicas import EngineState

GATEWAY_KEY = web.AppKey("gateway", Gateway)


def build_control_app(gateway: Gateway) -> web.Application:
    app = web.Application()
    app[GATEWAY_KEY] = gateway
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
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


async def models(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    created = int(time.time())
    data = [
        {
            "id": model,
            "object": "model",
            "created": created,
            "owned_by": "fairlane",
            "engines": list(gateway.runtime.pools[pool]),
        }
        for model, pool in sorted(gateway.runtime.model_to_pool.items())
    ]
    return web.json_response({"object": "list", "data": data})


async def metrics(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    body = generate_latest(gateway.metrics.registry)
    return web.Response(body=body, headers={"content-type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY_KEY]
    return web.json_response(snapshot(gateway))
