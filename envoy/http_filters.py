"""The HTTP filter chain: strip internal headers, note the Content-Encoding sent,
decompress a compressed upload, lift body fields into metadata, count a batch's prompts
or a chat's or a response's media (Lua), ask the worker (ext_proc, headers only), watch
usage (Lua), route."""

from __future__ import annotations

from importlib import resources
from typing import Any

from fairlane.envoy.common import (
    CLUSTER_HEADER,
    DECISION_NAMESPACE,
    DECOMPRESSORS,
    REQUEST_ID_HEADER,
    ROUTER_FILTER,
    UNSET_RUNTIME_KEY,
    WORKER_CLUSTER,
    T,
    seconds,
)
from fairlane.extproc.client_certificate import XFCC_HEADER
from fairlane.extproc.request import (
    JSON_ERROR_KEY,
    MODEL_MISSING_KEY,
    REQUEST_NAMESPACE,
    SENT_ENCODING_KEY,
)

CORS_FILTER = "envoy.filters.http.cors"  # its policy is the virtual host's (routes.py)
# Each runs on one path only (routes.py turns them off elsewhere).
PROMPT_COUNT_FILTER = "fairlane.prompt_count"  # /v1/completions and the pooling APIs
MEDIA_COUNT_FILTER = "fairlane.media_count"  # /v1/chat/completions, /responses, /messages
# `:path` tells the worker which API's fields the body holds; a `content-encoding` left
# after the decompressors is one Envoy cannot undo.
FORWARDED_HEADERS = (
    ":path", "x-tenant-id", "authorization", "x-api-key", "content-length", "content-type",
    "content-encoding", REQUEST_ID_HEADER, XFCC_HEADER,
)  # fmt: skip
# How far past the longest queue wait Envoy waits for the worker's decision on a request.
EXT_PROC_MARGIN_S = 5.0


def http_filters(longest_wait: float, max_body_bytes: int) -> list[dict[str, Any]]:
    return [
        {
            # Answers a browser's preflight before anything reads the body; adds the CORS
            # headers to every answer, Fairlane's refusals included. Inert without
            # `listener.cors_allow_origins`.
            "name": CORS_FILTER,
            "typed_config": {"@type": T + "envoy.extensions.filters.http.cors.v3.Cors"},
        },
        {
            # A client must never pick its own engine cluster or engine priority, nor
            # the id its slot is kept under.
            "name": "envoy.filters.http.header_mutation",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.header_mutation.v3.HeaderMutation",
                "mutations": {
                    "request_mutations": [
                        {"remove": CLUSTER_HEADER},
                        # vLLM also takes a priority from this header, over the body's.
                        {"remove": "x-vllm-priority"},
                        # Envoy answers a plain `Expect: 100-continue` itself; anything
                        # else (a repeated one, say) would reach the engine, whose 417
                        # is plain text. The body arrives anyway, so drop the header.
                        {"remove": "expect"},
                        {
                            "append": {
                                "header": {"key": REQUEST_ID_HEADER, "value": "%UNIQUE_ID%"},
                                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                            }
                        },
                    ]
                },
            },
        },
        _sent_encoding(),
        *(_decompressor(encoding, library) for encoding, library in DECOMPRESSORS.items()),
        {
            # Buffers the whole body (json_to_metadata would anyway) and sets its
            # content-length: a chunked upload's prompt is estimated from its size too,
            # and a compressed one from its size once decompressed (which this limits).
            "name": "envoy.filters.http.buffer",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": max_body_bytes,
            },
        },
        {
            "name": "envoy.filters.http.json_to_metadata",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.json_to_metadata.v3.JsonToMetadata",
                "request_rules": {
                    "allow_empty_content_type": True,
                    "allow_content_types": [
                        "application/json",
                        "application/x-www-form-urlencoded",
                        "text/plain",
                    ],
                    "rules": _body_rules(),
                },
            },
        },
        _lua(PROMPT_COUNT_FILTER, "prompts.lua"),
        _lua(MEDIA_COUNT_FILTER, "media.lua"),
        {
            "name": "envoy.filters.http.ext_proc",
            "typed_config": {
                "@type": T + "envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
                "grpc_service": {"envoy_grpc": {"cluster_name": WORKER_CLUSTER}},
                # Never let a request bypass tenant identification and fairness.
                "failure_mode_allow": False,
                # Lets the worker ask for the body of requests bound to engines that
                # take a vLLM `priority` field (engines.<name>.inject_priority).
                "allow_mode_override": True,
                "status_on_error": {"code": 503},
                "processing_mode": {
                    "request_header_mode": "SEND",
                    "response_header_mode": "SKIP",
                    "request_body_mode": "NONE",
                    "response_body_mode": "NONE",
                    "request_trailer_mode": "SKIP",
                    "response_trailer_mode": "SKIP",
                },
                # Decisions normally take well under a millisecond; queued requests
                # extend this with override_message_timeout up to the queue timeout.
                # Generous: on an overcommitted VM (CPU steal) or a CPU saturated by an
                # engine on the same cores, the worker can stall for a second or two,
                # and a refusal then would be Fairlane's fault, not the request's.
                "message_timeout": "5s",
                # Bounded by the longest wait any queue may have after a reload, not by
                # today's queue timeouts: a raised queue.timeout_s applies at once.
                "max_message_timeout": seconds(longest_wait + EXT_PROC_MARGIN_S),
                "forward_rules": {
                    "allowed_headers": {"patterns": [{"exact": h} for h in FORWARDED_HEADERS]}
                },
                "metadata_options": {
                    "forwarding_namespaces": {"untyped": [REQUEST_NAMESPACE]},
                    "receiving_namespaces": {"untyped": [DECISION_NAMESPACE]},
                },
            },
        },
        _lua("envoy.filters.http.lua", "usage.lua"),
        ROUTER_FILTER,
    ]


def _sent_encoding() -> dict[str, Any]:
    """Keeps the Content-Encoding the client sent, before the decompressors remove their
    token of it: the worker names it whole in a 415 ("gzip, gzip" leaves "gzip"), and
    knows a body that decompressed to nothing was compressed, not empty."""
    rule = {
        "header": "content-encoding",
        "on_header_present": {
            "metadata_namespace": REQUEST_NAMESPACE,
            "key": SENT_ENCODING_KEY,
            "type": "STRING",
        },
    }
    return {
        "name": "envoy.filters.http.header_to_metadata",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.header_to_metadata.v3.Config",
            "request_rules": [rule],
        },
    }


def _decompressor(encoding: str, library: str) -> dict[str, Any]:
    """Undoes one Content-Encoding of request bodies (and removes the header), so the
    body fields, the size estimate and the engine all see plain JSON. Responses are
    left alone: engines do not compress them."""

    def enabled(on: bool) -> dict[str, Any]:
        flag = {"default_value": on, "runtime_key": UNSET_RUNTIME_KEY}
        return {"enabled": flag, "ignore_no_transform_header": True}

    library_config: dict[str, Any] = {"@type": T + library}
    if encoding == "gzip":
        # gzip stops at 100x by default; the buffer's max_body_bytes bounds the result
        # anyway, so allow the most (a repetitive prompt compresses far past 100x).
        library_config["max_inflate_ratio"] = 1032
    return {
        "name": f"fairlane.decompress.{encoding}",
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.decompressor.v3.Decompressor",
            "decompressor_library": {"name": encoding, "typed_config": library_config},
            "request_direction_config": {
                "common_config": enabled(True),
                "advertise_accept_encoding": False,
            },
            "response_direction_config": {"common_config": enabled(False)},
        },
    }


def _lua(name: str, script: str) -> dict[str, Any]:
    """A Lua filter running one of the scripts shipped beside this module."""
    source = resources.files("fairlane.envoy").joinpath(script).read_text()
    return {
        "name": name,
        "typed_config": {
            "@type": T + "envoy.extensions.filters.http.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def _body_rules() -> list[dict[str, Any]]:
    def field(*path: str, key: str) -> dict[str, Any]:
        return {
            "selectors": [{"key": p} for p in path],
            "on_present": {"metadata_namespace": REQUEST_NAMESPACE, "key": key},
        }

    model = field("model", key="model")
    # Also for a list, an object or null, which it cannot lift (nor tell from none: the
    # worker's message asks for a string `model`, which covers both).
    model["on_missing"] = {
        "metadata_namespace": REQUEST_NAMESPACE,
        "key": MODEL_MISSING_KEY,
        "value": True,
    }
    model["on_error"] = {
        "metadata_namespace": REQUEST_NAMESPACE,
        "key": JSON_ERROR_KEY,
        "value": True,
    }
    return [
        model,
        field("max_tokens", key="max_tokens"),
        field("max_completion_tokens", key="max_completion_tokens"),
        field("max_output_tokens", key="max_output_tokens"),  # /v1/responses
        field("background", key="background"),  # /v1/responses: refused (pipeline)
        field("n", key="n"),
        field("best_of", key="best_of"),
        field("stream", key="stream"),
    ]
