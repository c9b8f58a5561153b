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
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fairlane.engine_config import is_ip_address
from fairlane.envoy.access_logs import file_access_log, grpc_access_log
from fairlane.envoy.common import (
    CONTROL_CLUSTER,
    MAX_DOWNSTREAM_CONNECTIONS,
    MAX_STREAMS_PER_CONNECTION,
    WORKER_CLUSTER,
    T,
    engine_cluster_name,
    http_filter_chain,
    load_assignment,
    seconds,
    socket_address,
    unlimited_breakers,
)
from fairlane.envoy.http_filters import EXT_PROC_MARGIN_S, http_filters
from fairlane.envoy.local_replies import local_replies
from fairlane.envoy.routes import routes
from fairlane.envoy.tls import (
    CLIENT_CERTIFICATE_DETAILS,
    TLS_HANDSHAKE_TIMEOUT,
    TLS_INSPECTOR,
    plaintext_refusal,
    transport_socket,
    upstream_transport_socket,
)
from fairlane.policy import Policy
from fairlane.rundir import RunDir

CONNECTION_BUFFER_BYTES = 1024 * 1024  # Envoy's default


def render_bootstrap(policy: Policy, run_dir: RunDir) -> dict[str, Any]:
    listener = policy.listener
    # The longest a request can wait in Fairlane's queue, now or after any reload (the
    # listener needs a restart; every queue.timeout_s must stay below its idle timeout).
    longest_wait = listener.stream_idle_timeout_s
    cds_dir = run_dir.cds.parent
    return {
        "node": {"id": f"fairlane-{listener.port}", "cluster": "fairlane"},
        "admin": {
            "address": socket_address(listener.admin_host, listener.admin_port),
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
                        "max_active_downstream_connections": MAX_DOWNSTREAM_CONNECTIONS,
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
            "listeners": [_listener(policy, run_dir, longest_wait)],
            "clusters": [
                {
                    "name": WORKER_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": _http2_options(),
                    "load_assignment": load_assignment(
                        WORKER_CLUSTER, [{"pipe": {"path": str(run_dir.worker_socket)}}]
                    ),
                    "circuit_breakers": unlimited_breakers(),
                },
                {
                    "name": CONTROL_CLUSTER,
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "load_assignment": load_assignment(
                        CONTROL_CLUSTER, [socket_address("127.0.0.1", listener.control_port)]
                    ),
                },
            ],
        },
    }


def render_cds(
    endpoints: dict[str, tuple[str, int] | None],
    version: int,
    tls: Mapping[str, tuple[str, Path]] | None = None,
) -> dict[str, Any]:
    """One cluster per engine; an engine that is not healthy has no endpoint (503, not 404).
    ``tls``: the engines reached over TLS, with their host and CA bundle."""
    clusters = []
    for engine, address in sorted(endpoints.items()):
        name = engine_cluster_name(engine)
        hosts = [] if address is None else [socket_address(*address)]
        upstream_tls = (tls or {}).get(engine)
        secure = (
            {}
            if upstream_tls is None
            else {"transport_socket": upstream_transport_socket(*upstream_tls)}
        )
        clusters.append(
            {
                **secure,
                "@type": T + "envoy.config.cluster.v3.Cluster",
                "name": name,
                **_discovery(None if address is None else address[0]),
                "connect_timeout": "2s",
                "load_assignment": load_assignment(name, hosts),
                "circuit_breakers": unlimited_breakers(),
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


def _discovery(host: str | None) -> dict[str, Any]:
    """An engine at an IP address is a STATIC endpoint; one named by a host name (a
    compose service such as ``http://vllm:8000``, ``localhost``) is looked up by Envoy,
    which refuses the name as a STATIC address. LOGICAL_DNS: one engine, so one address
    at a time (the first the name gives), IPv4 first as vLLM listens on 0.0.0.0."""
    if host is None or is_ip_address(host):
        return {"type": "STATIC"}
    return {"type": "LOGICAL_DNS", "dns_lookup_family": "V4_PREFERRED"}


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Envoy's file watch ignores in-place edits: write a temp file and rename it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document, indent=1))
    tmp.replace(path)


def _listener(policy: Policy, run_dir: RunDir, longest_wait: float) -> dict[str, Any]:
    listener = policy.listener
    chain = _filter_chain(policy, run_dir, longest_wait)
    # A listener filter waits for the connection's first bytes, and closes it if none
    # come within listener_filters_timeout (15 s): otherwise a connection that never
    # sends a byte is held for the idle timeout (300 s), and 20,000 of them (the
    # connection limit) would shut everyone out for that long.
    chains, listener_filters = [chain], [HTTP_INSPECTOR]
    if listener.tls is not None:
        client_ca = run_dir.client_ca_secret if listener.tls.mutual else None
        chain["transport_socket"] = transport_socket(run_dir.tls_secret, client_ca)
        chain["filter_chain_match"] = {"transport_protocol": "tls"}
        # A handshake left unfinished would hold its connection for ever.
        chain["transport_socket_connect_timeout"] = TLS_HANDSHAKE_TIMEOUT
        chains.append(plaintext_refusal())
        listener_filters = [TLS_INSPECTOR]
    return {
        "name": "fairlane_openai",
        "address": socket_address(listener.host, listener.port),
        # What one connection may hold in Envoy's buffers: a client that stops reading
        # a stream pins this much (the engine is pushed back beyond it). A request body
        # is not bound by it: the buffer filter holds up to listener.max_body_bytes.
        "per_connection_buffer_limit_bytes": CONNECTION_BUFFER_BYTES,
        "listener_filters": listener_filters,
        "filter_chains": chains,
    }


HTTP_INSPECTOR = {
    "name": "envoy.filters.listener.http_inspector",
    "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.http_inspector.v3.HttpInspector"
    },
}


def _filter_chain(policy: Policy, run_dir: RunDir, longest_wait: float) -> dict[str, Any]:
    listener = policy.listener
    return http_filter_chain(
        {
            **(CLIENT_CERTIFICATE_DETAILS if listener.mutual_tls else {}),
            "stat_prefix": "fairlane",
            # Envoy's edge defaults: routes see /v1/models/../../status as
            # /status, and //v1/... as /v1/...
            "normalize_path": True,
            "merge_slashes": True,
            # The client gets the id the access log records (the OpenAI
            # SDK shows it as `_request_id`): one grep finds its request.
            "always_set_request_id_in_response": True,
            "stream_idle_timeout": seconds(listener.stream_idle_timeout_s),
            # Envoy's clock runs until the request is sent to the engine,
            # so it also spans the wait in Fairlane's queue (and the
            # margin the ext_proc filter gives the worker).
            "request_timeout": seconds(
                listener.request_timeout_s + longest_wait + EXT_PROC_MARGIN_S
            ),
            "request_headers_timeout": "10s",
            "drain_timeout": seconds(max(1.0, listener.drain_grace_s)),
            "common_http_protocol_options": {
                "idle_timeout": "300s",
                "headers_with_underscores_action": "REJECT_REQUEST",
            },
            # HTTP/1.0 clients (ApacheBench, old proxies) are served too:
            # Envoy ends a stream by closing the connection.
            "http_protocol_options": {
                "accept_http_10": True,
                "default_host_for_http_10": "fairlane",
            },
            "http2_protocol_options": {"max_concurrent_streams": MAX_STREAMS_PER_CONNECTION},
            "access_log": [file_access_log(run_dir), grpc_access_log()],
            "local_reply_config": local_replies(policy),
            "route_config": routes(policy),
            "http_filters": http_filters(longest_wait, listener.max_body_bytes),
        }
    )


def _http2_options() -> dict[str, Any]:
    return {
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {"max_concurrent_streams": 100000}},
        }
    }
