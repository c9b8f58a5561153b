"""gRPC servicers: protobuf in, plain objects to the Gateway, protobuf out. Nothing else.

``ExternalProcessor.Process`` receives one request-headers message per HTTP request
(with the json_to_metadata fields) and answers it: continue with the engine cluster
header, an immediate OpenAI error, or — when the request must queue — first a
message-timeout extension, then the answer once a slot frees. ``StreamAccessLogs``
(``access_log.py``) receives Envoy's end-of-request records and gives the slots back.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3 import processing_mode_pb2
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as ep
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc
from envoy.type.v3 import http_status_pb2
from google.protobuf import duration_pb2, struct_pb2

from fairlane.envoy.common import CLUSTER_HEADER, DECISION_NAMESPACE, engine_cluster_name
from fairlane.extproc.access_log import AccessLogServicer
from fairlane.extproc.announce import Announcer
from fairlane.extproc.errors import TOO_DEEP, Reason, Rejection
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.outcomes import Admitted, Pending, SharedLimitCheck
from fairlane.extproc.request import (
    REQUEST_NAMESPACE,
    RequestInfo,
    combined_headers,
    request_info,
)

BUFFERED = processing_mode_pb2.ProcessingMode.BUFFERED
# vLLM (which reads this header before the body's `priority`) and the simulator take the
# priority in a header set with the routing decision: no second round trip for the body.
PRIORITY_HEADER = "x-vllm-priority"


class ExtProcServicer(ep_grpc.ExternalProcessorServicer):  # type: ignore[misc]
    def __init__(self, gateway: Gateway, announcer: Announcer) -> None:
        self._gateway = gateway
        self._announcer = announcer
        self._cluster_mutations: dict[
            tuple[str, bool, str | None, bool, int | None, str | None], ep.HeaderMutation
        ] = {}

    async def Process(
        self, request_iterator: AsyncIterator[ep.ProcessingRequest], context: Any
    ) -> AsyncIterator[ep.ProcessingResponse]:
        in_body: Admitted | None = None  # set when this request's body must carry its priority
        anthropic = False  # errors in Anthropic's shape (/v1/messages)
        async for message in request_iterator:
            if message.HasField("request_body") and in_body is not None:
                yield self._priority_in_body(message.request_body.body, in_body, anthropic)
                continue
            if not message.HasField("request_headers"):
                # Only request headers are configured; anything else passes untouched.
                yield _passthrough(message)
                continue
            info = _request_info(message)
            anthropic = info.anthropic
            outcome = self._gateway.begin(info)
            if isinstance(outcome, Pending | SharedLimitCheck):
                waiting = outcome
                try:
                    yield ep.ProcessingResponse(
                        override_message_timeout=duration_pb2.Duration(
                            seconds=int(waiting.timeout_s) + 2
                        )
                    )
                except GeneratorExit:
                    # The stream ended before the wait began (the client left): queued,
                    # the request would take a slot no one gives back. (A shared limit
                    # check charges nothing before its result.)
                    if isinstance(waiting, Pending):
                        waiting.withdraw()
                    raise
                outcome = await waiting.result()
            if isinstance(outcome, Rejection):
                yield _immediate(outcome, anthropic)
                continue
            transport = self._gateway.runtime.engine(outcome.replica).priority_transport
            if outcome.ticket.sequences:
                # Before Envoy forwards it: the engine's scheduler hears of it sooner.
                self._announcer.announce(outcome.replica, outcome.engine_priority)
            else:
                transport = None  # the tokenizer: nothing to put before anything
            response = self._admit(outcome, info, transport == "header")
            if transport == "body":
                # Engines that read the priority from the body only (SGLang, and an
                # external server of unknown version) pay a second round trip for it.
                in_body = outcome
                response.mode_override.request_body_mode = BUFFERED
            yield response

    def _priority_in_body(
        self, body: bytes, admitted: Admitted, anthropic: bool
    ) -> ep.ProcessingResponse:
        response = _body_with_priority(body, admitted.engine_priority)
        if response is not None:
            return response
        tenant = self._gateway.label(admitted.ticket)
        rejection = Rejection(Reason.INVALID_JSON, TOO_DEEP, tenant=tenant)
        self._gateway.count_rejection(rejection)
        return _immediate(rejection, anthropic)  # the lease ends with the stream, as any other

    def _admit(
        self, admitted: Admitted, info: RequestInfo, priority_header: bool
    ) -> ep.ProcessingResponse:
        ticket = admitted.ticket
        metadata = struct_pb2.Struct()
        # Field by field: several times cheaper than Struct.update() on a nested dict.
        fields = metadata.fields[DECISION_NAMESPACE].struct_value.fields
        if admitted.lease_id:
            fields["lease"].string_value = admitted.lease_id
        else:  # a request that holds no slot is only counted when it ends: by this label
            fields["label"].string_value = self._gateway.label(ticket)
        fields["tenant"].string_value = ticket.tenant_id
        fields["model"].string_value = ticket.model
        fields["engine"].string_value = admitted.replica
        return ep.ProcessingResponse(
            request_headers=ep.HeadersResponse(
                response=ep.CommonResponse(
                    header_mutation=self._mutation(
                        admitted.replica,
                        ticket.tenant_id,
                        info,
                        admitted.engine_priority if priority_header else None,
                    ),
                    clear_route_cache=True,
                )
            ),
            dynamic_metadata=metadata,
        )

    def _mutation(
        self, engine: str, tenant_id: str, info: RequestInfo, priority: int | None
    ) -> ep.HeaderMutation:
        """Cached per engine: route header, and with API keys on the tenant header
        rewritten from the key (a client cannot claim another tenant) and the key
        removed before the engine. A body sent as a form (curl -d) is declared JSON,
        which is what it is (json_to_metadata parsed it), so every engine accepts it.
        ``priority`` goes to the engine as vLLM's X-Vllm-Priority header (a client's
        own is stripped by Envoy before ext_proc)."""
        runtime = self._gateway.runtime
        keyed, auth = runtime.api_keys_enabled, runtime.engine_auth.get(engine)
        key = (engine, keyed, tenant_id if keyed else None, info.declared_json, priority, auth)
        cached = self._cluster_mutations.get(key)
        if cached is not None:
            return cached
        headers = [_header(CLUSTER_HEADER, engine_cluster_name(engine))]
        removed: list[str] = []
        if not info.declared_json:
            headers.append(_header("content-type", "application/json"))
        if priority is not None:
            headers.append(_header(PRIORITY_HEADER, str(priority)))
        if keyed:
            headers.append(_header("x-tenant-id", tenant_id))
        if auth is not None:  # the engine's own key, in place of the client's
            headers.append(_header("authorization", auth))
        elif keyed:
            removed.append("authorization")
        if keyed:
            removed.append("x-api-key")
        mutation = ep.HeaderMutation(set_headers=headers, remove_headers=removed)
        if len(self._cluster_mutations) < 4096:  # bounded: keyed tenants are policy-named
            self._cluster_mutations[key] = mutation
        return mutation


def add_servicers(server: grpc.aio.Server, gateway: Gateway, announcer: Announcer) -> None:
    ep_grpc.add_ExternalProcessorServicer_to_server(ExtProcServicer(gateway, announcer), server)
    als_pb2_grpc.add_AccessLogServiceServicer_to_server(AccessLogServicer(gateway), server)


# -- translation helpers ------------------------------------------------------------------


def _request_info(message: ep.ProcessingRequest) -> RequestInfo:
    headers = combined_headers(
        (h.key, h.raw_value.decode("latin-1") if h.raw_value else h.value)
        for h in message.request_headers.headers.headers
    )
    namespace = message.metadata_context.filter_metadata.get(REQUEST_NAMESPACE)
    fields: dict[str, Any] = {}
    if namespace is not None:
        for key, value in namespace.fields.items():
            kind = value.WhichOneof("kind")
            if kind == "string_value":
                fields[key] = value.string_value
            elif kind == "number_value":
                fields[key] = value.number_value
            elif kind == "bool_value":
                fields[key] = value.bool_value
            else:  # objects, lists, null: present but of the wrong type
                fields[key] = object()
    return request_info(headers, fields)


def _immediate(rejection: Rejection, anthropic: bool) -> ep.ProcessingResponse:
    response = ep.ProcessingResponse(
        immediate_response=ep.ImmediateResponse(
            status=http_status_pb2.HttpStatus(code=rejection.status),
            headers=ep.HeaderMutation(set_headers=[_header(k, v) for k, v in rejection.headers()]),
            body=rejection.body(anthropic),
            details=f"fairlane_{rejection.reason.code}",
        )
    )
    if rejection.tenant is not None:  # the access log then says whose request it was
        fields = response.dynamic_metadata.fields[DECISION_NAMESPACE].struct_value.fields
        fields["tenant"].string_value = rejection.tenant
    return response


def _body_with_priority(body: bytes, priority: int) -> ep.ProcessingResponse | None:
    """Add vLLM's ``priority`` (lower runs first) to the JSON body; fix content-length.
    None: the body nests deeper than Python parses (Envoy's parser takes up to 999
    levels, Python ~970)."""
    try:
        document = json.loads(body)
    except ValueError:
        document = None
    except RecursionError:
        return None
    if not isinstance(document, dict):  # json_to_metadata already vetted it; be safe
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=ep.CommonResponse()))
    document["priority"] = priority
    new_body = json.dumps(document, separators=(",", ":")).encode()
    return ep.ProcessingResponse(
        request_body=ep.BodyResponse(
            response=ep.CommonResponse(
                header_mutation=ep.HeaderMutation(
                    set_headers=[_header("content-length", str(len(new_body)))]
                ),
                body_mutation=ep.BodyMutation(body=new_body),
            )
        )
    )


def _passthrough(message: ep.ProcessingRequest) -> ep.ProcessingResponse:
    phase = message.WhichOneof("request")
    empty = ep.CommonResponse()
    if phase == "request_body":
        return ep.ProcessingResponse(request_body=ep.BodyResponse(response=empty))
    if phase == "response_headers":
        return ep.ProcessingResponse(response_headers=ep.HeadersResponse(response=empty))
    if phase == "response_body":
        return ep.ProcessingResponse(response_body=ep.BodyResponse(response=empty))
    if phase == "request_trailers":
        return ep.ProcessingResponse(request_trailers=ep.TrailersResponse())
    return ep.ProcessingResponse(response_trailers=ep.TrailersResponse())


def _header(key: str, value: str) -> base_pb2.HeaderValueOption:
    return base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=key, raw_value=value.encode("latin-1")),
        append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
    )
