"""Envoy's TLS settings: HTTPS on the API port, and to an external engine's https url.

Envoy reads the certificate and key from a file-based secret (SDS) in the run directory,
not from the bootstrap, so that a renewed pair is served without a restart: Fairlane
rewrites the secret (``fairlane.certificates``) and Envoy, watching its directory, takes
it for new connections; those made before keep theirs. The CAs that sign client
certificates (mutual TLS) come the same way, from a second secret file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairlane.engine_config import is_ip_address
from fairlane.envoy.common import ROUTER_FILTER, T, header, http_filter_chain
from fairlane.extproc.errors import Reason, error_body

SECRET_NAME = "fairlane_listener_tls"
CLIENT_CA_SECRET_NAME = "fairlane_client_ca"
_TLS = T + "envoy.extensions.transport_sockets.tls.v3."
HTTPS_REQUIRED = "This port serves HTTPS: send the request to https://, not http://."

TLS_HANDSHAKE_TIMEOUT = "10s"  # as request_headers_timeout: a client that stalls is cut
# Tells a TLS ClientHello from plain text, so each finds its filter chain.
TLS_INSPECTOR = {
    "name": "envoy.filters.listener.tls_inspector",
    "typed_config": {
        "@type": T + "envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
    },
}


def transport_socket(secret_file: Path, client_ca_file: Path | None) -> dict[str, Any]:
    """The listener's TLS, its certificate from ``secret_file`` (HTTP/2 offered first);
    with ``client_ca_file``, a client must show a certificate one of its CAs signed."""
    context: dict[str, Any] = {
        "common_tls_context": {
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificate_sds_secret_configs": [_sds(SECRET_NAME, secret_file)],
        }
    }
    if client_ca_file is not None:
        context["require_client_certificate"] = True
        context["common_tls_context"]["validation_context_sds_secret_config"] = _sds(
            CLIENT_CA_SECRET_NAME, client_ca_file
        )
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": _TLS + "DownstreamTlsContext", **context},
    }


# What the API's connection manager tells ext_proc of a client certificate: Envoy
# replaces any x-forwarded-client-cert the client sent with the names in the one it
# showed (without mutual TLS Envoy's default removes the header), so the names cannot
# be forged.
CLIENT_CERTIFICATE_DETAILS = {
    "forward_client_cert_details": "SANITIZE_SET",
    "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
}


def _sds(name: str, secret_file: Path) -> dict[str, Any]:
    return {
        "name": name,
        "sds_config": {
            "resource_api_version": "V3",
            "path_config_source": {
                "path": str(secret_file),
                "watched_directory": {"path": str(secret_file.parent)},
            },
        },
    }


def upstream_transport_socket(host: str, ca_file: Path) -> dict[str, Any]:
    """TLS to an https:// engine: its certificate checked against ``ca_file`` and for
    its host (Envoy checks no name unless told which: SNI alone checks nothing)."""
    by_name = not is_ip_address(host)
    context: dict[str, Any] = {
        "common_tls_context": {
            "validation_context": {
                "trusted_ca": {"filename": str(ca_file)},
                "match_typed_subject_alt_names": [
                    {
                        "san_type": "DNS" if by_name else "IP_ADDRESS",
                        "matcher": {"exact": host},
                    }
                ],
            }
        }
    }
    if by_name:
        context["sni"] = host
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": _TLS + "UpstreamTlsContext", **context},
    }


def plaintext_refusal() -> dict[str, Any]:
    """The filter chain of a plain HTTP request to the HTTPS port: an answer that says
    so (as nginx does), not a connection closed without a word."""
    refusal = {
        "match": {"prefix": "/"},
        "direct_response": {
            "status": Reason.HTTPS_REQUIRED.status,
            "body": {"inline_string": _refusal_body()},
        },
        "response_headers_to_add": [header("content-type", "application/json")],
    }
    return http_filter_chain(
        {
            "stat_prefix": "fairlane_plaintext",
            "request_headers_timeout": "10s",
            "route_config": {
                "virtual_hosts": [{"name": "plaintext", "domains": ["*"], "routes": [refusal]}]
            },
            "http_filters": [ROUTER_FILTER],
        }
    )


def _refusal_body() -> str:
    return error_body(Reason.HTTPS_REQUIRED, HTTPS_REQUIRED).decode()


def render_secret(cert_pem: str, key_pem: str) -> dict[str, Any]:
    """The SDS file: the pair itself, so that new contents are a new secret to Envoy
    (it ignores a rewrite that names the same files, whatever they hold now)."""
    pair = {
        "certificate_chain": {"inline_string": cert_pem},
        "private_key": {"inline_string": key_pem},
    }
    return _secret({"name": SECRET_NAME, "tls_certificate": pair})


def render_client_ca(ca_pem: str) -> dict[str, Any]:
    """The SDS file of the CAs that sign client certificates, inline as the pair."""
    trusted = {"trusted_ca": {"inline_string": ca_pem}}
    return _secret({"name": CLIENT_CA_SECRET_NAME, "validation_context": trusted})


def _secret(resource: dict[str, Any]) -> dict[str, Any]:
    return {"resources": [{"@type": _TLS + "Secret", **resource}]}
