"""Envoy's own error replies, rewritten into the OpenAI error shape."""

from __future__ import annotations

from typing import Any

from fairlane.envoy.common import CONTROL_PATHS, MODEL_PATH_PREFIX, UNSET_RUNTIME_KEY, T, header
from fairlane.extproc.errors import Reason, error_body
from fairlane.policy import Policy


def local_replies(policy: Policy) -> dict[str, Any]:
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
            m["headers_to_add"] = [header("retry-after", str(retry_after))]
        return m

    def flags(*names: str) -> dict[str, Any]:
        return {"response_flag_filter": {"flags": list(names)}}

    # /health, /v1/models[/...] and /metrics are the worker's own: if it is unreachable, say so.
    control_paths = {
        "or_filter": {
            "filters": [
                {"header_filter": {"header": {"name": ":path", "string_match": match}}}
                for match in [{"exact": path} for path in CONTROL_PATHS]
                + [{"prefix": MODEL_PATH_PREFIX}]
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
                            "value": {"default_value": 413, "runtime_key": UNSET_RUNTIME_KEY},
                        }
                    }
                },
                Reason.BODY_TOO_LARGE,
                f"request body exceeds the {limit_mib:g} MiB limit",
            ),
            mapper(_envoy_error(404, 406), Reason.NOT_FOUND, "unknown path or method"),
            mapper(
                _envoy_error(408, 409),
                Reason.REQUEST_TIMEOUT,
                "the request took too long to arrive",
            ),
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
