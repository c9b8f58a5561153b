"""Names and small builders shared by every part of the rendered Envoy configuration."""

from __future__ import annotations

from typing import Any

CLUSTER_HEADER = "x-fairlane-cluster"
# Envoy's own unique id of each request (a client's value is overwritten): the key of the
# slot it is given, which its end-of-request record names even when the decision that
# gave the slot never reached Envoy (the client left as it was sent).
REQUEST_ID_HEADER = "x-fairlane-request-id"
WORKER_CLUSTER = "fairlane_worker"
CONTROL_CLUSTER = "fairlane_control"
DECISION_NAMESPACE = "fairlane"  # dynamic metadata the worker attaches to an admitted request
USAGE_NAMESPACE = "fairlane.usage"  # written by usage.lua
CHAT_PATH = "/v1/chat/completions"
COMPLETIONS_PATH = "/v1/completions"
RESPONSES_PATH = "/v1/responses"  # OpenAI's Responses API, stateless (vLLM serves it)
EMBEDDINGS_PATH = "/v1/embeddings"  # an engine serving an embedding (pooling) model
# vLLM's other pooling APIs: a cross-encoder's rerank (Jina's, Cohere's v2) and score, a
# classifier's classify, raw pooling. Like embeddings they generate nothing, and run a
# sequence per input, document or pair.
RERANK_PATHS = ("/rerank", "/v1/rerank", "/v2/rerank")
SCORE_PATHS = ("/score", "/v1/score")
POOLING_PATHS = (EMBEDDINGS_PATH, *RERANK_PATHS, *SCORE_PATHS, "/classify", "/pooling")
# Anthropic's Messages API (vLLM serves it, so Anthropic SDKs and agents work): its
# errors take Anthropic's shape, Envoy's own included.
MESSAGES_PATH = "/v1/messages"
INFERENCE_PATHS = (CHAT_PATH, COMPLETIONS_PATH, RESPONSES_PATH, MESSAGES_PATH, *POOLING_PATHS)
# The engine's tokenizer (vLLM's, and Anthropic's token count): routed by model like the
# others, but they take no engine slot and cost no tokens.
TOKENIZER_PATHS = ("/tokenize", "/detokenize", MESSAGES_PATH + "/count_tokens")
# Whose body may be a batch, and the keys of its lists of prompts, each item a sequence
# of its own (envoy/prompts.lua counts the longest; the route's metadata names them): a
# rerank's documents are a (query, document) pair each, a score pairs its two sides.
PROMPT_KEYS: dict[str, tuple[str, ...]] = {
    COMPLETIONS_PATH: ("prompt",),
    **dict.fromkeys((EMBEDDINGS_PATH, "/classify", "/pooling"), ("input",)),
    **dict.fromkeys(RERANK_PATHS, ("documents",)),
    **dict.fromkeys(
        SCORE_PATHS, ("text_1", "text_2", "data_1", "data_2", "queries", "documents", "items")
    ),
}
BATCH_PATHS = tuple(PROMPT_KEYS)
CONTROL_PATHS = ("/health", "/v1/models", "/metrics")
MODEL_PATH_PREFIX = "/v1/models/"  # GET /v1/models/{model}, the worker's too
T = "type.googleapis.com/"
# Request bodies Envoy decompresses before anything reads them: Content-Encoding value
# -> the decompressor library that undoes it.
DECOMPRESSORS = {
    "gzip": "envoy.extensions.compression.gzip.decompressor.v3.Gzip",
    "br": "envoy.extensions.compression.brotli.decompressor.v3.Brotli",
    "zstd": "envoy.extensions.compression.zstd.decompressor.v3.Zstd",
}
# Envoy wants a runtime key beside some constant values; Fairlane never sets this one.
UNSET_RUNTIME_KEY = "fairlane.no_such_key"
# Envoy's overload manager refuses connections past this. Over HTTP/1.1 it also bounds
# how many requests can wait for the worker's decision at once (one ext_proc stream
# each); over HTTP/2 the worker's own limit on pending calls (the same) bounds it.
MAX_DOWNSTREAM_CONNECTIONS = 20_000
# Streams one HTTP/2 client connection may have open: a client multiplexing more waits
# for a free stream, as HTTP/2 clients do, so one connection cannot open unbounded
# ext_proc streams. Envoy 1.40's default is also 1024 (older ones: 2^31 - 1); pinned.
MAX_STREAMS_PER_CONNECTION = 1024


def on_messages_api(path: str) -> bool:
    """Is this path (without its query) Anthropic's API, whose errors take its shape?"""
    return path == MESSAGES_PATH or path.startswith(MESSAGES_PATH + "/")


def engine_cluster_name(engine: str) -> str:
    return f"engine_{engine}"


def unlimited_breakers() -> dict[str, Any]:
    # Fairlane's own admission bounds what reaches an engine; Envoy's default of 1024
    # requests per cluster must not second-guess it. Nor its 3 retries at once: every
    # request retries at most once (routes.py), so retries in flight are bounded by the
    # admitted requests, and after a quiet spell many pooled connections can be stale
    # together; the 4th request on one would get a 503 (UO) instead of its retry.
    big = 1_000_000
    return {
        "thresholds": [
            {
                "max_connections": big,
                "max_pending_requests": big,
                "max_requests": big,
                "max_retries": big,
            }
        ]
    }


def load_assignment(cluster: str, addresses: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "cluster_name": cluster,
        "endpoints": [{"lb_endpoints": [{"endpoint": {"address": a}} for a in addresses]}],
    }


def socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def header(key: str, value: str) -> dict[str, Any]:
    return {"header": {"key": key, "value": value}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}


def seconds(value: float) -> str:
    return f"{value:.3f}s"


ROUTER_FILTER = {
    "name": "envoy.filters.http.router",
    "typed_config": {"@type": T + "envoy.extensions.filters.http.router.v3.Router"},
}


def http_filter_chain(settings: dict[str, Any]) -> dict[str, Any]:
    """A filter chain of one HTTP connection manager (HTTP/1 or HTTP/2, as the client
    speaks) with these settings."""
    return {
        "filters": [
            {
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": T + "envoy.extensions.filters.network.http_connection_manager."
                    "v3.HttpConnectionManager",
                    "codec_type": "AUTO",
                    **settings,
                },
            }
        ]
    }
