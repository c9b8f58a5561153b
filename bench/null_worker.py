"""A do-nothing ext_proc + access-log server: the grpc.aio floor under the worker's cost.

``python -P -m fairlane.bench.null_worker SOCKET`` answers every request-headers message
with one precompiled admit (same shape as the worker's: route header and a lease in the
dynamic metadata) and drops access-log records. ``fairlane bench decisions --baseline``
drives it exactly like the worker, so the difference is Fairlane's own decision code.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.accesslog.v3 import als_pb2, als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc


def _admit() -> ep.ProcessingResponse:
    header = base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key="x-fairlane-cluster", raw_value=b"engine_sim")
    )
    response = ep.ProcessingResponse(
        request_headers=ep.HeadersResponse(
            response=ep.CommonResponse(
                header_mutation=ep.HeaderMutation(set_headers=[header]), clear_route_cache=True
            )
        )
    )
    response.dynamic_metadata.update({"fairlane": {"lease": "null-1"}})
    return response


class NullProcessor(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._admit = _admit()

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        async for _ in request_iterator:
            yield self._admit


class NullAccessLog(als_pb2_grpc.AccessLogServiceServicer):  # type: ignore[misc]
    async def StreamAccessLogs(
        self, request_iterator: AsyncIterator[als_pb2.StreamAccessLogsMessage], context: Any
    ) -> als_pb2.StreamAccessLogsResponse:
        async for _ in request_iterator:
            pass
        return als_pb2.StreamAccessLogsResponse()


async def serve(socket_path: str) -> None:
    server = grpc.aio.server()
    ep_grpc.add_ExternalProcessorServicer_to_server(NullProcessor(), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(NullAccessLog(), server)
    server.add_insecure_port(f"unix:{socket_path}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(grace=1)


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1]))
