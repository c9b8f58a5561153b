"""Access logs: a JSON line per request to a file, and each admitted request's end to the
worker over gRPC (the slot comes back with it)."""

from __future__ import annotations

from typing import Any

from fairlane.envoy.common import (
    DECISION_NAMESPACE,
    REQUEST_ID_HEADER,
    UNSET_RUNTIME_KEY,
    USAGE_NAMESPACE,
    WORKER_CLUSTER,
    T,
)
from fairlane.extproc.request import MEDIA_ITEMS_KEY, PROMPTS_KEY, REQUEST_NAMESPACE
from fairlane.rundir import RunDir


def file_access_log(run_dir: RunDir) -> dict[str, Any]:
    def decision(key: str) -> str:
        return f"%DYNAMIC_METADATA({DECISION_NAMESPACE}:{key})%"

    return {
        "name": "envoy.access_loggers.file",
        "typed_config": {
            "@type": T + "envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": str(run_dir.access_log),
            "log_format": {
                "json_format": {
                    "time": "%START_TIME%",
                    "method": "%REQ(:METHOD)%",
                    "path": "%REQ(:PATH)%",
                    "tenant": decision("tenant"),
                    "model": decision("model"),
                    "engine": decision("engine"),
                    "status": "%RESPONSE_CODE%",
                    "flags": "%RESPONSE_FLAGS%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "bytes_in": "%BYTES_RECEIVED%",
                    "bytes_out": "%BYTES_SENT%",
                    "duration_ms": "%DURATION%",
                    "first_byte_ms": "%RESPONSE_DURATION%",
                    "usage": f"%DYNAMIC_METADATA({USAGE_NAMESPACE})%",
                    # A completions batch: its prompts (null for one).
                    "prompts": f"%DYNAMIC_METADATA({REQUEST_NAMESPACE}:{PROMPTS_KEY})%",
                    # A chat's images, audio and video, linked or inline (null for none).
                    "media": f"%DYNAMIC_METADATA({REQUEST_NAMESPACE}:{MEDIA_ITEMS_KEY})%",
                    "ext_proc": "%FILTER_STATE(envoy.filters.http.ext_proc:PLAIN)%",
                    "request_id": "%REQ(X-REQUEST-ID)%",
                    # Who sent it: the peer (a proxy in front is the peer) and its client.
                    "client": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
                    "user_agent": "%REQ(USER-AGENT)%",
                }
            },
        },
    }


def grpc_access_log() -> dict[str, Any]:
    return {
        "name": "envoy.access_loggers.http_grpc",
        # The requests the worker routed (an admitted one gives its slot back, a tokenizer
        # call is counted), and those whose client left before any answer: if the
        # decision that gave one a slot never reached Envoy, that slot comes back too.
        "filter": {
            "or_filter": {
                "filters": [
                    {
                        "metadata_filter": {
                            "matcher": {
                                "filter": DECISION_NAMESPACE,
                                "path": [{"key": "engine"}],
                                "value": {"present_match": True},
                            },
                            "match_if_key_not_found": False,
                        }
                    },
                    {
                        "status_code_filter": {
                            "comparison": {
                                "op": "EQ",
                                "value": {"default_value": 0, "runtime_key": UNSET_RUNTIME_KEY},
                            }
                        }
                    },
                ]
            }
        },
        "typed_config": {
            "@type": T + "envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig",
            "common_config": {
                "log_name": "fairlane",
                "transport_api_version": "V3",
                "grpc_service": {"envoy_grpc": {"cluster_name": WORKER_CLUSTER}},
                # Small batches: the slot comes back within a few ms of the stream's end.
                "buffer_flush_interval": "0.005s",
                "buffer_size_bytes": 2048,
            },
            "additional_request_headers_to_log": [REQUEST_ID_HEADER],
        },
    }
