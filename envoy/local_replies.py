"""Envoy's own error replies, rewritten into the OpenAI error shape (Anthropic's on
its Messages API)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fairlane.envoy.common import (
    CONTROL_PATHS,
    MESSAGES_PATH,
    MODEL_PATH_PREFIX,
    UNSET_RUNTIME_KEY,
    T,
    header,
)
from fairlane.extproc.errors import Reason, error_body
from fairlane.policy import Policy


def local_replies(policy: Policy) -> dict[str, Any]:
    """Envoy's own errors, rewritten into the OpenAI error shape (Anthropic's on
    /v1/messages)."""
    limit_mib = policy.listener.max_body_bytes / (1024 * 1024)

    def flags(*names: str) -> dict[str, Any]:
        return {"response_flag_filter": {"flags": list(names)}}

    # /health, /v1/models[/...] and /metrics are the worker's own: if it is unreachable, say so.
    control_paths = {
        "or_filter": {
            "filters": [
                _path_filter(match)
                for match in [{"exact": path} for path in CONTROL_PATHS]
                + [{"prefix": MODEL_PATH_PREFIX}]
            ]
        }
    }
    ext_proc_failed = _cel("response.code_details.startsWith('ext_proc_error')")
    status_413 = {
        "status_code_filter": {
            "comparison": {
                "op": "EQ",
                "value": {"default_value": 413, "runtime_key": UNSET_RUNTIME_KEY},
            }
        }
    }
    worker_restarting = _Reply(
        {"and_filter": {"filters": [control_paths, flags("UH", "UF", "UC", "UR")]}},
        Reason.GATEWAY_UNAVAILABLE,
        "the Fairlane worker is restarting",
        retry_after=1,
    )
    # Those of an inference request, on any API.
    replies = [
        _Reply(
            flags("NC", "UH", "UF", "UC", "UR", "URX", "UO", "UMSDR"),
            Reason.ENGINE_UNAVAILABLE,
            "the engine for this model is not reachable right now",
            retry_after=1,
        ),
        _Reply(
            flags("SI"),
            Reason.STREAM_IDLE_TIMEOUT,
            # Envoy's one timer for both directions: which one stalled, it does not say.
            "nothing moved for longer than the stream idle timeout: the engine sent no "
            "answer, or the client stopped sending its body",
        ),
        _Reply(
            ext_proc_failed,
            Reason.GATEWAY_UNAVAILABLE,
            "the Fairlane decision service is unavailable",
            retry_after=1,
        ),
        _Reply(
            status_413, Reason.BODY_TOO_LARGE, f"request body exceeds the {limit_mib:g} MiB limit"
        ),
        _Reply(_envoy_error(404, 406), Reason.NOT_FOUND, "unknown path or method"),
        # Envoy refuses a WebSocket (or any non-h2c) upgrade with a bare 403.
        _Reply(
            _cel("response.code_details == 'upgrade_failed'"),
            Reason.UPGRADE_NOT_SUPPORTED,
            "WebSocket and other protocol upgrades are not supported; send plain HTTP requests",
        ),
        _Reply(
            _envoy_error(408, 409), Reason.REQUEST_TIMEOUT, "the request took too long to arrive"
        ),
    ]
    messages = _path_filter({"prefix": MESSAGES_PATH})
    return {
        "mappers": [worker_restarting.mapper(None, anthropic=False)]
        + [reply.mapper(messages, anthropic=True) for reply in replies]
        + [reply.mapper(None, anthropic=False) for reply in replies]
        # Anything else Envoy answers by itself (malformed HTTP, oversize headers...),
        # mostly before it has read a path: keep its status, wrap its text in OpenAI's
        # shape.
        + [
            _wrapped(_envoy_error(400, 500), "invalid_request_error", "bad_request"),
            _wrapped(_envoy_error(500, 600), "service_unavailable", "gateway_error"),
        ]
    }


@dataclass(frozen=True, slots=True)
class _Reply:
    """One kind of Envoy error and the reply Fairlane gives for it."""

    filter: dict[str, Any]
    reason: Reason
    message: str
    retry_after: int | None = None

    def mapper(self, only: dict[str, Any] | None, anthropic: bool) -> dict[str, Any]:
        """The local-reply mapper; ``only`` narrows it (to a path)."""
        filter_ = self.filter if only is None else {"and_filter": {"filters": [only, self.filter]}}
        m: dict[str, Any] = {
            "filter": filter_,
            "status_code": self.reason.status,
            "body": {"inline_string": error_body(self.reason, self.message, anthropic).decode()},
            "body_format_override": {
                "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                "content_type": "application/json",
            },
        }
        if self.retry_after is not None:
            m["headers_to_add"] = [header("retry-after", str(self.retry_after))]
        return m


def _path_filter(match: dict[str, str]) -> dict[str, Any]:
    return {"header_filter": {"header": {"name": ":path", "string_match": match}}}


def _cel(expression: str) -> dict[str, Any]:
    return {
        "extension_filter": {
            "name": "envoy.access_loggers.extension_filters.cel",
            "typed_config": {
                "@type": T + "envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                "expression": expression,
            },
        }
    }


def _envoy_error(low: int, high: int) -> dict[str, Any]:
    """A local reply of Envoy's own in [low, high): not a route's direct response, not an
    answer Fairlane's worker already shaped."""
    return _cel(
        f"response.code >= {low} && response.code < {high}"
        " && response.code_details != 'direct_response'"
        " && !response.code_details.startsWith('fairlane_')"
    )


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
