"""Render the Envoy bootstrap for a policy.

Envoy does the HTTP: it strips internal headers, lets ``json_to_metadata`` pull the
model and token fields out of the body in C++, asks Fairlane's worker for a decision in
one ext_proc round trip (headers only), routes by the ``x-fairlane-cluster`` header the
worker sets, streams the engine's response through unbuffered, watches usage with a
small Lua filter and reports each finished request to the worker over the gRPC access
log service. Engine clusters come from a CDS file the supervisor rewrites.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from fairlane.extproc.errors import Reason, error_body
from fairlane.extproc.request import JSON_ERROR_KEY, MODEL_MISSING_KEY, REQUEST_NAMESPACE
from fairlane.policy import Policy
from fairlane.rundir import RunDir

CLUSTER_HEADER = "x-fairlane-cluster"
WORKER_CLUSTER = "fairlane_worker"
CONTROL_CLUSTER = "fairlane_control"
DECISION_NAMESPACE = "fairlane"  # dynamic metadata the worker attaches to an admitted request
USAGE_NAMESPACE = "fairlane.usage"  # written by usage.lua
FORWARDED_HEADERS = ("x-tenant-id", "authorization", "content-length", "content-type")
INFERENCE_PATHS = ("/v1/chat/completions", "/v1/completions")
CONTROL_PATHS = ("/health", "/v1/models", "/metrics")
T = "type.googleapis.com/"


def engine_cluster_name(engine: str) -> str:
    return f"engine_{engine}"


def render_bootstrap(policy: Policy, run_dir: RunDir) -> dict[str, Any]:
    listener = policy.listener
    queue_timeout = max(e.queue.timeout_s for e in policy.engines.values())
    cds_dir = run_dir.cds.parent
    return {
        "node": {"id": f"fairlane-{listener.port}", "cluster": "fairlane"},
        "admin": {
            "address": _socket(listener.admin_host, listener.admin_port),
            "access_log": [],
        },
        "layered_runtime": {"layers": [{"name": "admin", "admin_layer": {}}]},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": T + "envoy.extensions.resource_monitors."
                        "downstream_connections.v3.DownstreamConnectionsConfig",
                        "max_active_downstream_connections": 20000,
                    },
                }
            ]
        },
        "dynamic_resources": {
            "cds_config": {
                "resource_api_version": "V3",
                "path_config_source": {
                    "path": str(run_dir.cds),
                    "watched_directory": {"path": str(cds_dir)},
                },
            }
        },
        "static_resources": {
            "listeners": [_listener(policy, run_dir, queue_timeout)],
            "clusters": [
                {
                    "name": WORKER_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": _http2_options(),
                    "load_assignment": _endpoints(
                        WORKER_CLUSTER, [{"pipe": {"path": str(run_dir.worker_socket)}}]
                    ),
                    "circuit_breakers": _unlimited_breakers(),
                },
                {
                    "name": CONTROL_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": _endpoints(
                        CONTROL_CLUSTER, [_socket("127.0.0.1", listener.control_port)]
                    ),
                },
            ],
        },
    }


def render_cds(endpoints: dict[str, tuple[str, int] | None], version: int) -> dict[str, Any]:
    """One cluster per engine; an engine that is not healthy has no endpoint (503, not 404)."""
    clusters = []
    for engine, address in sorted(endpoints.items()):
        name = engine_cluster_name(engine)
        hosts = [] if address is None else [_socket(*address)]
        clusters.append(
            {
                "@type": T + "envoy.config.cluster.v3.Cluster",
                "name": name,
                "type": "STATIC",
                "connect_timeout": "2s",
                "load_assignment": _endpoints(name, hosts),
                "circuit_breakers": _unlimited_breakers(),
                "typed_extension_protocol_options": {
                    "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                        "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                        # Below uvicorn's 5 s keep-alive (vLLM, SGLang): a pooled
                        # connection the engine is closing would otherwise be reused,
                        # and the request reset (503 + quarantine) before it started.
                        "common_http_protocol_options": {"idle_timeout": "4s"},
                        "explicit_http_config": {"http_protocol_options": {}},
                    }
                },
            }
        )
    return {"version_info": str(version), "resources": clusters}


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Envoy's file watch ignores in-place edits: write a temp file and rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)


# -- pieces ---------------------------------------------------------------------------


def _listener(policy: Policy, run_dir: RunDir, queue_timeout: float) -> dict[str, Any]:
    listener = policy.listener
    return {
        "name": "fairlane_openai",
        "address": _socket(listener.host, listener.port),
        # json_to_metadata buffers the request body up to this size; beyond it Envoy
        # answers 413 (mapped to an OpenAI error below).
        "per_connection_buffer_limit_bytes": listener.max_body_bytes,
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": T + "envoy.extensions.filters.network.http_connection_manager."
                            "v3.HttpConnectionManager",
                            "stat_prefix": "fairlane",
                            "codec_type": "AUTO",
                            "stream_idle_timeout": _seconds(listener.stream_idle_timeout_s),
                            "request_headers_timeout": "10s",
                            "drain_timeout": _seconds(max(1.0, listener.drain_grace_s)),
                            "common_http_protocol_options": {
                                "idle_timeout": "300s",
                                "headers_with_underscores_action": "REJECT_REQUEST",
                            },
                            "access_log": [_file_access_log(run_dir), _grpc_access_log()],
                            "local_reply_config": _local_replies(policy),
                            "route_config": _routes(policy),
                            "http_filters": _http_filters(queue_timeout),
                        },
                    }
                ]
            }
        ],
    }


def _http_filters(queue_timeout: float) -> list[dict[str, Any]]:
    lua_source = resources.files("fairlane.envoy").joinpath("usage.lua").read_text()
    return [
        {
            # A client must never pick its own engine cluster or engine priority.
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [
                        {"remove": CLUSTER_HEADER},
                        # vLLM also takes a priority from this header, over the body's.
                        {"remove": "x-vllm-priority"},
                        # Envoy answers a plain `Expect: 100-continue` itself; anything
                        # else (a repeated one, say) would reach the engine, whose 417
                        # is plain text. The body arrives anyway, so drop the header.
                        {"remove": "expect"},
                    ]
                },
            },
        },
        {
            "name": "envoy.filters.http.json_to_metadata",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
                "request_rules": {
                    "allow_empty_content_type": True,
                    "allow_content_types": [
                        "application/json",
                        "application/x-www-form-urlencoded",
                        "text/plain",
                    ],
                    "rules": _body_rules(),
                },
            },
        },
        {
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": WORKER_CLUSTER}},
                # Never let a request bypass tenant identification and fairness.
                "failure_mode_allow": False,
                # Lets the worker ask for the body of requests bound to engines that
                # take a vLLM `priority` field (engines.<name>.inject_priority).
                "allow_mode_override": True,
                "status_on_error": {"code": 503},
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "request_body_mode": "NONE",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
                # Decisions normally take well under a millisecond; queued requests
                # extend this with override_message_timeout up to the queue timeout.
                # Generous: on an overcommitted VM (CPU steal) or a CPU saturated by an
                # engine on the same cores, the worker can stall for a second or two,
                # and a refusal then would be Fairlane's fault, not the request's.
                "message_timeout": "5s",
                "max_message_timeout": _seconds(queue_timeout + 5),
                "forward_rules": {
                    "allowed_headers": {"patterns": [{"exact": h} for h in FORWARDED_HEADERS]}
                },
                "metadata_options": {
                    "forwarding_namespaces": {"untyped": [REQUEST_NAMESPACE]},
                    "receiving_namespaces": {"untyped": [DECISION_NAMESPACE]},
                },
            },
        },
        {
            "name": "envoy.filters.http.lua",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.lua.v3.Lua",
                "default_source_code": {"inline_string": lua_source},
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
        },
    ]


def _body_rules() -> list[dict[str, Any]]:
    def field(*path: str, key: str) -> dict[str, Any]:
        return {
            "selectors": [{"key": p} for p in path],
            "on_present": {"metadata_namespace": REQUEST_NAMESPACE, "key": key},
        }

    model = field("model", key="model")
    model["on_missing"] = {
        "metadata_namespace": REQUEST_NAMESPACE,
        "key": MODEL_MISSING_KEY,
        "value": True,
    }
    model["on_error"] = {
        "metadata_namespace": REQUEST_NAMESPACE,
        "key": JSON_ERROR_KEY,
        "value": True,
    }
    return [
        model,
        field("max_tokens", key="max_tokens"),
        field("max_completion_tokens", key="max_completion_tokens"),
        field("stream", key="stream"),
        field("stream_options", "include_usage", key="include_usage"),
    ]


def _routes(policy: Policy) -> dict[str, Any]:
    idle = _seconds(policy.listener.stream_idle_timeout_s)
    routes: list[dict[str, Any]] = []
    for path in INFERENCE_PATHS:
        routes.append(
            {
                "match": {
                    "path": path,
                    "headers": [{"name": ":method", "string_match": {"exact": "POST"}}],
                },
                "route": {"cluster_header": CLUSTER_HEADER, "timeout": "0s", "idle_timeout": idle},
            }
        )
        routes.append(_direct(path, Reason.METHOD_NOT_ALLOWED, f"use POST for {path}"))
    control = [p for p in CONTROL_PATHS if p != "/metrics" or policy.listener.expose_metrics]
    for path in control:
        routes.append(
            {
                "match": {
                    "path": path,
                    "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
                },
                "route": {"cluster": CONTROL_CLUSTER, "timeout": "10s"},
                "typed_per_filter_config": _bypass_filters(),
            }
        )
    routes.append({"match": {"prefix": "/"}, **_direct_body(Reason.NOT_FOUND, "unknown path")})
    return {"virtual_hosts": [{"name": "fairlane", "domains": ["*"], "routes": routes}]}


def _direct(path: str, reason: Reason, message: str) -> dict[str, Any]:
    return {"match": {"path": path}, **_direct_body(reason, message)}


def _direct_body(reason: Reason, message: str) -> dict[str, Any]:
    return {
        "direct_response": {
            "status": reason.status,
            "body": {"inline_string": error_body(reason, message).decode()},
        },
        "response_headers_to_add": [_header("content-type", "application/json")],
        "typed_per_filter_config": _bypass_filters(),
    }


def _bypass_filters() -> dict[str, Any]:
    return {
        "envoy.filters.http.ext_proc": {
            "@type": T + "envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute",
            "disabled": True,
        },
        "envoy.filters.http.lua": {
            "@type": T + "envoy.extensions.filters.http.lua.v3.LuaPerRoute",
            "disabled": True,
        },
    }


def _local_replies(policy: Policy) -> dict[str, Any]:
    """Envoy's own errors, rewritten into the OpenAI error shape."""
    limit_mib = policy.listener.max_body_bytes / (1024 * 1024)

    def mapper(
        filter_: dict[str, Any], reason: Reason, message: str, retry_after: int | None = None
    ) -> dict[str, Any]:
        m: dict[str, Any] = {
            "filter": filter_,
            "status_code": reason.status,
            "body": {"inline_string": error_body(reason, message).decode()},
            "body_format_override": {
                "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                "content_type": "application/json",
            },
        }
        if retry_after is not None:
            m["headers_to_add"] = [_header("retry-after", str(retry_after))]
        return m

    def flags(*names: str) -> dict[str, Any]:
        return {"response_flag_filter": {"flags": list(names)}}

    # /health, /v1/models and /metrics are the worker's own: if it is unreachable, say so.
    control_paths = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": {"exact": path}}}}
                for path in CONTROL_PATHS
            ]
        }
    }
    return {
        "mappers": [
            mapper(
                {"and_filter": {"filters": [control_paths, flags("UH", "UF", "UC", "UR")]}},
                Reason.GATEWAY_UNAVAILABLE,
                "the Fairlane worker is restarting",
                retry_after=1,
            ),
            mapper(
                flags("NC", "UH", "UF", "UC", "UR", "URX", "UO", "UMSDR"),
                Reason.ENGINE_UNAVAILABLE,
                "the engine for this model is not reachable right now",
                retry_after=1,
            ),
            mapper(
                flags("SI"),
                Reason.STREAM_IDLE_TIMEOUT,
                "the response stalled longer than the stream idle timeout",
            ),
            mapper(
                {
                    "extension_filter": {
                        "name": "envoy.access_loggers.extension_filters.cel",
                        "typed_config": {
                            "@type": T
                            + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                            "expression": "response.code_details.startsWith('ext_proc_error')",
                        },
                    }
                },
                Reason.GATEWAY_UNAVAILABLE,
                "the Fairlane decision service is unavailable",
                retry_after=1,
            ),
            mapper(
                {
                    "status_code_filter": {
                        "comparison": {
                            "op": "EQ",
                            "value": {"default_value": 413, "runtime_key": "fairlane.no_such_key"},
                        }
                    }
                },
                Reason.BODY_TOO_LARGE,
                f"request body exceeds the {limit_mib:g} MiB limit",
            ),
            mapper(_envoy_error(404, 406), Reason.NOT_FOUND, "unknown path or method"),
            # Anything else Envoy answers by itself (malformed HTTP, oversize headers...):
            # keep its status, wrap its text in the OpenAI error shape.
            _wrapped(_envoy_error(400, 500), "invalid_request_error", "bad_request"),
            _wrapped(_envoy_error(500, 600), "service_unavailable", "gateway_error"),
        ]
    }


def _envoy_error(low: int, high: int) -> dict[str, Any]:
    """A local reply of Envoy's own in [low, high): not a route's direct response, not an
    answer Fairlane's worker already shaped."""
    expression = (
        f"response.code >= {low} && response.code < {high}"
        " && response.code_details != 'direct_response'"
        " && !response.code_details.startsWith('fairlane_')"
    )
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _wrapped(filter_: dict[str, Any], error_type: str, code: str) -> dict[str, Any]:
    return {
        "filter": filter_,
        "body_format_override": {
            # json_format escapes Envoy's text safely into the message.
            "json_format": {
                "error": {
                    "message": "%LOCAL_REPLY_BODY% (%RESPONSE_CODE_DETAILS%)",
                    "type": error_type,
                    "param": None,
                    "code": code,
                }
            },
            "content_type": "application/json",
        },
    }


def _file_access_log(run_dir: RunDir) -> dict[str, Any]:
    def decision(key: str) -> str:
        return f"%DYNAMIC_METADATA({DECISION_NAMESPACE}:{key})%"

    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(run_dir.access_log),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(:PATH)%",
                    "tenant": decision("tenant"),
                    "model": decision("model"),
                    "engine": decision("engine"),
                    "status": "%RESPONSE_CODE%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "duration_ms": "%DURATION%",
                    "first_byte_ms": "%RESPONSE_DURATION%",
                    "usage": f"%DYNAMIC_METADATA({USAGE_NAMESPACE})%",
                    "ext_proc": "%FILTER_STATE(envoy.filters.http.ext_proc:PLAIN)%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                }
            },
        },
    }


def _grpc_access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.http_grpc",
        # Only admitted requests hold a slot the worker must get back.
        "filter": {
            "metadata_filter": {
                "matcher": {
                    "filter": DECISION_NAMESPACE,
                    "path": [{"key": "lease"}],
                    "value": {"present_match": True},
                }
            }
        },
        "typed_config": {
            "@type": T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "fairlane",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": WORKER_CLUSTER}},
                # Small batches: the slot comes back within a few ms of the stream's end.
                "buffer_flush_interval": "0.005s",
                "buffer_size_bytes": 2048,
            },
        },
    }


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100000}},
        }
    }


def _unlimited_breakers() -> dict[str, Any]:
    # Fairlane's own admission bounds what reaches an engine; Envoy's default of 1024
    # requests per cluster must not second-guess it.
    big = 1_000_000
    return {
        "thresholds": [
            {
                "max_connections": big,
                "max_pending_requests": big,
                "max_requests": big,
                "max_retries": 3,
            }
        ]
    }


def _endpoints(cluster: str, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}],
    }


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def _header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def _seconds(value: float) -> str:
    return f"{value:.3f}s"
