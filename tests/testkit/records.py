"""Envoy's end-of-request records (gRPC access log), built by hand for unit tests and
read by the worker's real access-log servicer."""

from __future__ import annotations

from envoy.data.accesslog.v3 import accesslog_pb2

from fairlane.envoy.common import DECISION_NAMESPACE, REQUEST_ID_HEADER
from fairlane.extproc.access_log import AccessLogServicer
from fairlane.extproc.gateway import Gateway


def record(
    request_id: str,
    status: int,
    lease: str | None = None,
    flags: tuple[str, ...] = (),
    engine_answered: bool = False,
) -> accesslog_pb2.HTTPAccessLogEntry:
    """A record of one request: ``flags`` are ResponseFlags field names
    (``no_healthy_upstream``); ``engine_answered``: a first byte came from the engine."""
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.response.response_code.value = status
    entry.request.request_headers[REQUEST_ID_HEADER] = request_id
    if lease is not None:
        decision = entry.common_properties.metadata.filter_metadata[DECISION_NAMESPACE]
        decision.fields["lease"].string_value = lease
    for flag in flags:
        setattr(entry.common_properties.response_flags, flag, True)
    if engine_answered:
        entry.common_properties.time_to_first_upstream_rx_byte.FromMilliseconds(5)
    return entry


def replay(g: Gateway, *entries: accesslog_pb2.HTTPAccessLogEntry) -> None:
    """Envoy's records, read by the worker's access-log servicer."""
    servicer = AccessLogServicer(g)
    for entry in entries:
        servicer._finish(entry)
