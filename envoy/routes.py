"""The listener's routes: inference paths to the engine the worker picked, control paths
to the worker's HTTP side, everything else answered by Envoy in the OpenAI error shape."""

from __future__ import annotations

from typing import Any

from fairlane.envoy.common import (
    BATCH_PATHS,
    CLUSTER_HEADER,
    CONTROL_CLUSTER,
    CONTROL_PATHS,
    INFERENCE_PATHS,
    MESSAGES_PATH,
    MODEL_PATH_PREFIX,
    PROMPT_KEYS,
    TOKENIZER_PATHS,
    T,
    header,
    on_messages_api,
    seconds,
)
from fairlane.envoy.http_filters import CORS_FILTER, MEDIA_COUNT_FILTER, PROMPT_COUNT_FILTER
from fairlane.extproc.errors import Reason, error_body
from fairlane.policy import Policy

READ_METHODS = {"safe_regex": {"regex": "GET|HEAD"}}


def routes(policy: Policy) -> dict[str, Any]:
    idle = seconds(policy.listener.stream_idle_timeout_s)
    routes: list[dict[str, Any]] = []
    origins = policy.listener.cors_allow_origins
    if origins:
        routes.append(_preflights())
    engine_paths = (*INFERENCE_PATHS, *TOKENIZER_PATHS)
    for path in engine_paths:
        routes.append(
            {
                "match": {
                    "path": path,
                    "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
                },
                "route": {
                    "cluster_header": CLUSTER_HEADER,
                    "timeout": "0s",
                    "idle_timeout": idle,
                    # An engine can close a pooled keep-alive connection just as a
                    # request is sent on it: one retry before any response byte
                    # (a generation has no side effect to repeat; at worst the engine
                    # saw the prompt twice). One that refuses again is quarantined.
                    "retry_policy": {"retry_on": "reset", "num_retries": 1},
                },
                "typed_per_filter_config": {name: _lua_off() for name in _counts_off(path)},
            }
        )
        if path in PROMPT_KEYS:  # read by envoy/prompts.lua
            keys = {"prompt_keys": list(PROMPT_KEYS[path])}
            routes[-1]["metadata"] = {"filter_metadata": {PROMPT_COUNT_FILTER: keys}}
        routes.append(_direct(path, Reason.METHOD_NOT_ALLOWED, f"use POST for {path}"))
    control = [p for p in CONTROL_PATHS if p != "/metrics" or policy.listener.expose_metrics]
    model = {"safe_regex": {"regex": f"{MODEL_PATH_PREFIX}.+"}}  # not an empty id
    matches = [{"path": path} for path in control] + [model]
    for match in matches:
        routes.append(
            {
                "match": {
                    **match,
                    # HEAD too: load balancers probe /health with it (the worker answers
                    # HEAD wherever it answers GET).
                    "headers": [{"name": ":method", "string_match": READ_METHODS}],
                },
                "route": {"cluster": CONTROL_CLUSTER, "timeout": "10s"},
                "typed_per_filter_config": bypass_filters(),
            }
        )
    for match in matches:
        where = match.get("path", MODEL_PATH_PREFIX + "{model}")
        routes.append(
            {"match": match, **direct_body(Reason.METHOD_NOT_ALLOWED, f"use GET for {where}")}
        )
    served = [f"POST {path}" for path in engine_paths] + ["GET /v1/models"]
    unknown = f"unknown path; this API serves {', '.join(served)}"
    # Anthropic clients call more of that API (count_tokens, batches): in its shape.
    anthropic_404 = direct_body(Reason.NOT_FOUND, unknown, anthropic=True)
    routes.append({"match": {"prefix": MESSAGES_PATH + "/"}, **anthropic_404})
    routes.append({"match": {"prefix": "/"}, **direct_body(Reason.NOT_FOUND, unknown)})
    host: dict[str, Any] = {"name": "fairlane", "domains": ["*"], "routes": routes}
    if origins:
        host["typed_per_filter_config"] = {CORS_FILTER: _cors_policy(origins)}
    return {"virtual_hosts": [host]}


def _counts_off(path: str) -> tuple[str, ...]:
    """The Lua counters a route does not need: a batch's prompts are counted, a chat's
    or a response's media; the tokenizer's requests hold no slot and cost nothing."""
    if path in TOKENIZER_PATHS:
        return (MEDIA_COUNT_FILTER, PROMPT_COUNT_FILTER)
    return (MEDIA_COUNT_FILTER,) if path in BATCH_PATHS else (PROMPT_COUNT_FILTER,)


def _preflights() -> dict[str, Any]:
    """Envoy's CORS filter answers a preflight only on a route to a cluster, not on a
    direct response: this one never reaches its cluster, whatever the origin."""
    return {
        "match": {
            "prefix": "/",
            "headers": [
                {"name": ":method", "string_match": {"exact": "OPTIONS"}},
                {"name": "access-control-request-method", "present_match": True},
            ],
        },
        "route": {"cluster": CONTROL_CLUSTER, "timeout": "10s"},
        "typed_per_filter_config": bypass_filters(),
    }


def _cors_policy(origins: tuple[str, ...]) -> dict[str, Any]:
    """What browsers on these origins may do: any method and header an OpenAI client
    sends (the SDKs add their own `x-stainless-*`), read every response header
    (`Retry-After`, `X-Request-ID`). No credentials: keys travel in a header."""
    return {
        "@type": T + "envoy.extensions.filters.http.cors.v3.CorsPolicy",
        "allow_origin_string_match": [
            {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
            for origin in origins
        ],
        "allow_methods": "GET, HEAD, POST, OPTIONS",
        "allow_headers": "*",
        "expose_headers": "*",
        "max_age": "600",
        # A preflight from another origin gets a plain 200 without CORS headers, which
        # the browser refuses.
        "forward_not_matching_preflights": False,
    }


def _direct(path: str, reason: Reason, message: str) -> dict[str, Any]:
    body = direct_body(reason, message, anthropic=on_messages_api(path))
    return {"match": {"path": path}, **body}


def direct_body(reason: Reason, message: str, anthropic: bool = False) -> dict[str, Any]:
    return {
        "direct_response": {
            "status": reason.status,
            "body": {"inline_string": error_body(reason, message, anthropic).decode()},
        },
        "response_headers_to_add": [header("content-type", "application/json")],
        "typed_per_filter_config": bypass_filters(),
    }


def bypass_filters() -> dict[str, Any]:
    return {
        "envoy.filters.http.ext_proc": {
            "@type": T + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        },
        PROMPT_COUNT_FILTER: _lua_off(),
        MEDIA_COUNT_FILTER: _lua_off(),
        "envoy.filters.http.lua": _lua_off(),
    }


def _lua_off() -> dict[str, Any]:
    return {"@type": T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute", "disabled": True}
