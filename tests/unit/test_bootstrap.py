"""The rendered Envoy configuration is accepted by the real Envoy binary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fairlane.envoy.admin import admin_url
from fairlane.envoy.bootstrap import render_cds, write_json_atomically
from fairlane.policy import ListenerConfig

from testkit.envoy_config import validate_rendered


def test_quickstart_bootstrap_validates_with_envoy(tmp_path: Path) -> None:
    result = validate_rendered(tmp_path, render_cds({"sim-a100": ("127.0.0.1", 1)}, 1))
    assert result.returncode == 0, result.stdout + result.stderr


def test_engine_connections_idle_out_before_the_engine_closes_them() -> None:
    """vLLM and SGLang (uvicorn) close a keep-alive connection after 5 s idle; Envoy must
    drop it first, or a request sent on it is reset before it starts (seen in e2e)."""
    (cluster,) = render_cds({"e": ("127.0.0.1", 8100)}, 1)["resources"]
    options = cluster["typed_extension_protocol_options"]
    http = options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    assert float(http["common_http_protocol_options"]["idle_timeout"].rstrip("s")) < 5


def test_cds_has_no_endpoint_for_unhealthy_engines(tmp_path: Path) -> None:
    doc = render_cds({"up": ("127.0.0.1", 8100), "down": None}, 7)
    clusters = {c["name"]: c for c in doc["resources"]}
    assert doc["version_info"] == "7"
    up = clusters["engine_up"]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert up[0]["endpoint"]["address"]["socket_address"]["port_value"] == 8100
    assert clusters["engine_down"]["load_assignment"]["endpoints"][0]["lb_endpoints"] == []
    path = tmp_path / "cds" / "cds.json"
    write_json_atomically(path, doc)
    assert json.loads(path.read_text()) == doc
    assert not list(path.parent.glob("*.tmp"))


def test_an_engine_named_by_a_host_name_is_looked_up_by_envoy(tmp_path: Path) -> None:
    """Envoy refuses a name as a STATIC address ("malformed IP address"), and with it the
    engine's cluster: a compose service (`http://vllm:8000`) was never reachable."""
    doc = render_cds(
        {"ip": ("10.0.0.7", 8000), "v6": ("::1", 8000), "named": ("vllm", 8000), "down": None},
        1,
    )
    types = {c["name"]: c["type"] for c in doc["resources"]}
    assert types == {
        "engine_ip": "STATIC",
        "engine_v6": "STATIC",
        "engine_named": "LOGICAL_DNS",
        "engine_down": "STATIC",
    }
    result = validate_rendered(tmp_path, doc)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("admin_host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:9901"),
        ("0.0.0.0", "http://127.0.0.1:9901"),  # listening everywhere: ask on loopback
        ("::", "http://[::1]:9901"),
        ("::1", "http://[::1]:9901"),
        ("10.1.2.3", "http://10.1.2.3:9901"),
    ],
)
def test_the_admin_url_reaches_the_admin_listener(admin_host: str, url: str) -> None:
    assert admin_url(ListenerConfig(admin_host=admin_host)) == url
