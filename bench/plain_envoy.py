"""A bare Envoy proxy, Fairlane's filters left out: the "Envoy alone" arm of
`fairlane bench overhead`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fairlane.bench.stack import Server
from fairlane.serve import envoy_binary

T = "type.googleapis.com/"


def plain_envoy_bootstrap(port: int, admin_port: int, upstream_port: int) -> dict[str, Any]:
    """Listener -> HTTP connection manager -> router -> one cluster; route timeout 0s."""
    route = {"match": {"prefix": "/"}, "route": {"cluster": "upstream", "timeout": "0s"}}
    hcm = {
        "@type": T + "envoy.extensions.filters.network.http_connection_manager.v3."
        "HttpConnectionManager",
        "stat_prefix": "plain",
        "codec_type": "AUTO",
        "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [route]}]},
        "http_filters": [
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
            }
        ],
    }
    listener = {
        "name": "plain",
        "address": _address(port),
        "filter_chains": [
            {
                "filters": [
                    {"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}
                ]
            }
        ],
    }
    big = 1_000_000
    cluster = {
        "name": "upstream",
        "type": "STATIC",
        "connect_timeout": "2s",
        "circuit_breakers": {
            "thresholds": [
                {"max_connections": big, "max_pending_requests": big, "max_requests": big}
            ]
        },
        "load_assignment": {
            "cluster_name": "upstream",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _address(upstream_port)}}]}],
        },
    }
    return {
        "admin": {"address": _address(admin_port)},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


def _address(port: int) -> dict[str, Any]:
    return {"socket_address": {"address": "127.0.0.1", "port_value": port}}


async def start_plain_envoy(port: int, admin_port: int, upstream_port: int, work: Path) -> Server:
    """A bare Envoy in front of ``upstream_port`` (the "Envoy alone" arm)."""
    config = work / f"plain-envoy-{port}.json"
    config.write_text(json.dumps(plain_envoy_bootstrap(port, admin_port, upstream_port)))
    argv = [
        envoy_binary(), "-c", str(config), "--log-level", "warning",
        "--disable-hot-restart", "--use-dynamic-base-id",
    ]  # fmt: skip
    server = Server("plain-envoy", argv, work / f"plain-envoy-{port}.log")
    await server.start()
    await server.wait_healthy(f"http://127.0.0.1:{port}/health", 30)
    return server
