"""Envoy's side of the worker's two gRPC services, reduced to what a decision needs:
the ``request_headers`` message Envoy would send, the lease in the answer, and the
end-of-request records that give the lease back (``fairlane bench decisions``).
"""

from __future__ import annotations

import asyncio

from envoy.config.core.v3 import base_pb2
from envoy.data.accesslog.v3 import accesslog_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

RELEASE_BATCH = 64


def decision_request(tenant: str, model: str, max_tokens: int) -> ep.ProcessingRequest:
    headers = [
        base_pb2.HeaderValue(key="x-tenant-id", raw_value=tenant.encode()),
        base_pb2.HeaderValue(key="content-length", raw_value=b"180"),
        base_pb2.HeaderValue(key="content-type", raw_value=b"application/json"),
    ]
    request = ep.ProcessingRequest(
        request_headers=ep.HttpHeaders(headers=base_pb2.HeaderMap(headers=headers))
    )
    request.metadata_context.filter_metadata["fairlane.request"].update(
        {"model": model, "max_tokens": max_tokens, "stream": True}
    )
    return request


def lease_of(response: ep.ProcessingResponse) -> str | None:
    if not response.HasField("request_headers"):
        return None
    decision = response.dynamic_metadata.fields.get("fairlane")
    if decision is None:
        return None
    lease = decision.struct_value.fields.get("lease")
    return lease.string_value if lease is not None else None


async def release_leases(
    stub: als_pb2_grpc.AccessLogServiceStub, leases: asyncio.Queue[str]
) -> None:
    """Envoy's gRPC access logger, reduced: batches of end-of-request records."""
    call = stub.StreamAccessLogs()
    identifier = als_pb2.StreamAccessLogsMessage.Identifier(log_name="fairlane")
    identifier.node.id = "bench"
    first = True
    try:
        while True:
            batch = [await leases.get()]
            while not leases.empty() and len(batch) < RELEASE_BATCH:
                batch.append(leases.get_nowait())
            message = als_pb2.StreamAccessLogsMessage(
                http_logs=als_pb2.StreamAccessLogsMessage.HTTPAccessLogEntries(
                    log_entry=[_log_entry(lease) for lease in batch]
                )
            )
            if first:
                message.identifier.CopyFrom(identifier)
                first = False
            await call.write(message)
            for _ in batch:
                leases.task_done()
    finally:
        call.cancel()


def _log_entry(lease: str) -> accesslog_pb2.HTTPAccessLogEntry:
    entry = accesslog_pb2.HTTPAccessLogEntry()
    entry.common_properties.metadata.filter_metadata["fairlane"].update({"lease": lease})
    entry.response.response_code.value = 200
    return entry
