"""The one table that maps every refusal to an HTTP status and an OpenAI-style error.

Both the ext_proc service (immediate responses) and the Envoy bootstrap (local replies
for errors Envoy itself produces: oversize body, engine unreachable, worker down) render
their bodies from this table, so a client always sees the same shape:
``{"error": {"message", "type", "param", "code"}}``; on Anthropic's Messages API
(``/v1/messages``) Anthropic's, ``{"type": "error", "error": {"type", "message"}}``, so
its SDKs raise the right error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from enum import Enum


class Reason(Enum):
    """Why Fairlane answered instead of an engine: (HTTP status, OpenAI type, code)."""

    INVALID_JSON = (400, "invalid_request_error", "invalid_json")
    MISSING_MODEL = (400, "invalid_request_error", "missing_model")
    INVALID_MODEL = (400, "invalid_request_error", "invalid_model")
    MISSING_TENANT = (400, "invalid_request_error", "missing_tenant")
    INVALID_TENANT = (400, "invalid_request_error", "invalid_tenant")
    UPGRADE_NOT_SUPPORTED = (400, "invalid_request_error", "upgrade_not_supported")
    HTTPS_REQUIRED = (400, "invalid_request_error", "https_required")
    UNSUPPORTED_PARAMETER = (400, "invalid_request_error", "unsupported_parameter")
    TOO_MANY_SEQUENCES = (400, "invalid_request_error", "too_many_sequences")
    INVALID_API_KEY = (401, "authentication_error", "invalid_api_key")
    UNKNOWN_TENANT = (403, "permission_error", "unknown_tenant")
    AMBIGUOUS_CERTIFICATE = (403, "permission_error", "ambiguous_client_certificate")
    MODEL_NOT_ALLOWED = (403, "permission_error", "model_not_allowed")
    MODEL_NOT_FOUND = (404, "invalid_request_error", "model_not_found")
    NOT_FOUND = (404, "invalid_request_error", "not_found")
    METHOD_NOT_ALLOWED = (405, "invalid_request_error", "method_not_allowed")
    REQUEST_TIMEOUT = (408, "invalid_request_error", "request_timeout")
    BODY_TOO_LARGE = (413, "invalid_request_error", "body_too_large")
    UNSUPPORTED_ENCODING = (415, "invalid_request_error", "unsupported_content_encoding")
    RATE_LIMIT_EXCEEDED = (429, "rate_limit_error", "rate_limit_exceeded")
    INSUFFICIENT_QUOTA = (429, "insufficient_quota", "insufficient_quota")
    QUEUE_FULL = (429, "rate_limit_error", "queue_full")
    QUEUE_TIMEOUT = (503, "service_unavailable", "queue_timeout")
    ENGINE_UNAVAILABLE = (503, "service_unavailable", "engine_unavailable")
    GATEWAY_UNAVAILABLE = (503, "service_unavailable", "gateway_unavailable")
    STREAM_IDLE_TIMEOUT = (504, "timeout", "stream_idle_timeout")

    @property
    def status(self) -> int:
        return int(self.value[0])

    @property
    def error_type(self) -> str:
        return str(self.value[1])

    @property
    def code(self) -> str:
        return str(self.value[2])


TOO_DEEP = "request body nests JSON too deeply"


@dataclass(frozen=True, slots=True)
class Rejection:
    """A request answered by Fairlane itself instead of an engine."""

    reason: Reason
    message: str
    retry_after_s: float | None = None
    tenant: str | None = None  # metric label, once the tenant is known

    @property
    def status(self) -> int:
        return self.reason.status

    def body(self, anthropic: bool = False) -> bytes:
        return error_body(self.reason, self.message, anthropic)

    def headers(self) -> list[tuple[str, str]]:
        headers = [("content-type", "application/json")]
        if self.retry_after_s is not None:
            headers.append(("retry-after", str(max(1, math.ceil(self.retry_after_s)))))
        return headers


def model_not_found(model: str) -> str:
    return f"The model `{model[:200]}` does not exist."


def error_body(reason: Reason, message: str, anthropic: bool = False) -> bytes:
    if anthropic:
        error = {"type": anthropic_error_type(reason.status), "message": message}
        return json.dumps({"type": "error", "error": error}, separators=(",", ":")).encode()
    fields = {"message": message, "type": reason.error_type, "param": None, "code": reason.code}
    return json.dumps({"error": fields}, separators=(",", ":")).encode()


# Anthropic's error types by status (https://docs.anthropic.com/en/api/errors); its
# SDKs pick the exception from the status, clients read the type. Fairlane's 503s are
# load it sheds, which Anthropic calls overloaded.
_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    503: "overloaded_error",
    504: "timeout_error",
}


def anthropic_error_type(status: int) -> str:
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _ANTHROPIC_TYPES.get(status, default)


def engine_down(engine: str) -> Rejection:
    return Rejection(
        Reason.ENGINE_UNAVAILABLE, f"engine {engine} is not available", retry_after_s=2.0
    )
