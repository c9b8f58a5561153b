"""Envoy's end-of-request records (gRPC access log): each admitted request's slot comes
back with the real usage the response carried; tokenizer calls are counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from google.protobuf import struct_pb2

from fairlane.envoy.common import DECISION_NAMESPACE, REQUEST_ID_HEADER, USAGE_NAMESPACE
from fairlane.extproc.accounting import Usage
from fairlane.extproc.gateway import Gateway


class AccessLogServicer(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    """Envoy's end-of-request records: release the slot, charge the real usage."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        async for message in request_iterator:
            for entry in message.http_logs.log_entry:
                self._finish(entry)
        return als_pb2.StreamAccessLogsResponse()

    def _finish(self, entry: accesslog_pb2.HTTPAccessLogEntry) -> None:
        common = entry.common_properties
        filters = common.metadata.filter_metadata
        decision = filters.get(DECISION_NAMESPACE)
        status = entry.response.response_code.value
        if decision is not None and "label" in decision.fields:  # a tokenizer call
            fields = decision.fields
            self._gateway.count_request(
                fields["label"].string_value, fields["model"].string_value, status
            )
            return
        if decision is None or "lease" not in decision.fields:
            if status == 0:  # the client left before any answer
                self._gateway.withdraw(entry.request.request_headers.get(REQUEST_ID_HEADER, ""))
            return
        usage_fields = filters.get(USAGE_NAMESPACE)
        usage = _usage(usage_fields) if usage_fields is not None else Usage()
        ttft = None
        if common.HasField("time_to_first_downstream_tx_byte"):
            ttft = common.time_to_first_downstream_tx_byte.ToTimedelta().total_seconds()
        flags = common.response_flags
        # The engine did not take the request: stop sending it more until the
        # supervisor's health checks catch up (they run every half second). Envoy with
        # no endpoint for it (UH: the supervisor has just taken a crashed engine out of
        # Envoy, and the worker is yet to read so) counts too: each such 503 is instant
        # and frees the slot for the next queued request, draining the queue otherwise.
        reset_before_response = (
            flags.upstream_connection_termination or flags.upstream_remote_reset
        ) and not common.HasField("time_to_first_upstream_rx_byte")
        engine_failed = bool(
            flags.upstream_connection_failure or flags.no_healthy_upstream or reset_before_response
        )
        self._gateway.finish(
            decision.fields["lease"].string_value,
            status,
            usage,
            ttft,
            engine_failed,
            # DC / DR: the client closed its connection (or, on HTTP/2, reset its
            # stream) before the answer was complete.
            client_left=flags.downstream_connection_termination or flags.downstream_remote_reset,
        )


def _usage(fields: struct_pb2.Struct) -> Usage:
    def number(key: str) -> int | None:
        value = fields.fields.get(key)
        return int(value.number_value) if value is not None else None

    return Usage(number("prompt_tokens"), number("completion_tokens"), number("chunks"))
