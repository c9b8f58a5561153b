"""Identify → validate → route, with no I/O."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.pipeline import Ticket, evaluate, identify, visible_models
from fairlane.extproc.request import combined_headers, request_info
from fairlane.extproc.runtime import Runtime, compile_policy
from fairlane.policy import hash_key
from fairlane.policy_file import PolicyError, parse_policy

BASE = """
version: 1
tenants:
  alice: {weight: 2, models: [m1]}
  bob: {priority: batch}
engines:
  e1: {kind: sim, models: [m1, m2]}
"""


def runtime(extra: str = "", base: str = BASE) -> Runtime:
    return compile_policy(parse_policy(base + extra), 1)


def info(tenant: str | None = "alice", auth: str | None = None, **fields: Any) -> Any:
    headers = {"content-length": "400"}
    if tenant is not None:
        headers["x-tenant-id"] = tenant
    if auth is not None:
        headers["authorization"] = auth
    return request_info(headers, {"model": "m1", **fields})


def rejected(result: object, reason: Reason) -> Rejection:
    assert isinstance(result, Rejection), result
    assert result.reason is reason, result
    return result


def test_ticket_carries_weight_priority_engine_and_cost() -> None:
    ticket = evaluate(info(max_tokens=100), runtime())
    assert isinstance(ticket, Ticket)
    assert (ticket.tenant.name, ticket.tenant.weight, ticket.pool) == ("alice", 2.0, "e1")
    assert ticket.prompt_tokens == 100  # 400 bytes at 4 chars per token
    assert ticket.cost == 1.0 * 100 + 2.0 * 100
    bob = evaluate(info("bob", model="m2"), runtime())
    assert isinstance(bob, Ticket) and bob.tenant.priority == 1
    assert bob.max_tokens == 256  # the policy default when the client sets none


def test_each_sequence_is_charged_its_max_tokens() -> None:
    ticket = evaluate(info(max_tokens=100, n=4), runtime())
    assert isinstance(ticket, Ticket)
    assert (ticket.sequences, ticket.completion_budget) == (4, 400)
    assert ticket.cost == 1.0 * 100 + 2.0 * 400  # the prompt is prefilled once
    wider = evaluate(info(max_tokens=10, n=2, best_of=5), runtime())
    assert isinstance(wider, Ticket) and wider.sequences == 5
    # As vLLM reads it: "3" is 3; 2.9 is refused (a default estimate, then the engine's 400).
    for value, want in ((True, 1), ("3", 3), (" 3 ", 3), (-1, 1), (0, 1), (2.9, 1), (None, 1)):
        ticket = evaluate(info(n=value), runtime())
        assert isinstance(ticket, Ticket) and ticket.sequences == want, value


def test_each_prompt_of_a_batch_is_n_sequences() -> None:
    """A completions `prompt` list (counted by envoy/prompts.lua) is one sequence per
    prompt and choice."""
    ticket = evaluate(info(max_tokens=10, n=2, prompts=3.0), runtime())
    assert isinstance(ticket, Ticket)
    assert (ticket.sequences, ticket.completion_budget) == (6, 60)
    for value in (None, 0, -4, True):
        ticket = evaluate(info(n=2, prompts=value), runtime())
        assert isinstance(ticket, Ticket) and ticket.sequences == 2, value


def test_inline_media_are_estimated_per_item_not_per_byte() -> None:
    """envoy/media.lua's count: 40,000 of the 40,400 bytes are two base64 images."""
    headers = {"content-length": "40400", "x-tenant-id": "alice"}
    fields = {"model": "m1", "max_tokens": 1, "media_items": 2.0, "media_bytes": 40000.0}
    ticket = evaluate(request_info(headers, fields), runtime())
    assert isinstance(ticket, Ticket)
    assert ticket.prompt_tokens == 100 + 2 * 1024  # the text at 4 chars a token, + items
    priced = runtime("cost: {media_tokens: 300}\n")
    ticket = evaluate(request_info(headers, fields), priced)
    assert isinstance(ticket, Ticket) and ticket.prompt_tokens == 100 + 2 * 300
    for junk in ("2", True, -1, None):
        ticket = evaluate(info(media_items=junk, media_bytes=junk), runtime())
        assert isinstance(ticket, Ticket) and ticket.prompt_tokens == 100, junk


def test_a_responses_request_is_estimated_from_its_own_fields() -> None:
    """/v1/responses limits the answer with `max_output_tokens` and has no `n`: the other
    APIs' fields, which the engine ignores there, cannot lower the estimate (or raise it),
    and chat's ignore `max_output_tokens` likewise."""
    fields = {"model": "m1", "max_output_tokens": 40, "max_tokens": 1, "n": 8, "stream": True}
    for path in ("/v1/responses", "/v1/responses?x=1"):
        headers = {":path": path, "content-length": "400", "x-tenant-id": "alice"}
        ticket = evaluate(request_info(headers, fields), runtime())
        assert isinstance(ticket, Ticket), path
        assert (ticket.max_tokens, ticket.sequences) == (40, 1), path
        assert not ticket.first_byte_is_token  # its stream opens before the first token
    headers = {":path": "/v1/chat/completions", "content-length": "400", "x-tenant-id": "alice"}
    ticket = evaluate(request_info(headers, fields), runtime())
    assert isinstance(ticket, Ticket)
    assert (ticket.max_tokens, ticket.sequences, ticket.first_byte_is_token) == (1, 8, True)
    no_limit = {"model": "m1", "max_tokens": 1}
    headers = {":path": "/v1/responses", "content-length": "400", "x-tenant-id": "alice"}
    ticket = evaluate(request_info(headers, no_limit), runtime())
    assert isinstance(ticket, Ticket) and ticket.max_tokens == 256  # the policy default


def test_an_embeddings_request_costs_its_prompt_only() -> None:
    """An embedding generates nothing: no completion budget whatever the body says, one
    sequence per `input` item (counted by envoy/prompts.lua)."""
    headers = {":path": "/v1/embeddings", "content-length": "400", "x-tenant-id": "alice"}
    fields = {"model": "m1", "max_tokens": 500, "n": 4, "prompts": 3.0}
    ticket = evaluate(request_info(headers, fields), runtime())
    assert isinstance(ticket, Ticket)
    assert (ticket.max_tokens, ticket.sequences, ticket.completion_budget) == (0, 3, 0)
    assert ticket.cost == 1.0 * 100  # the prompt estimate at the input weight
    assert not ticket.first_byte_is_token


def test_a_messages_request_is_estimated_from_its_max_tokens() -> None:
    """Anthropic's Messages API: `max_tokens` for one sequence (no `n` there), and its
    stream's first byte comes with the first token (vLLM's `message_start`)."""
    fields = {"model": "m1", "max_tokens": 30, "max_completion_tokens": 1, "n": 8, "stream": True}
    for path in ("/v1/messages", "/v1/messages?beta=true"):
        headers = {":path": path, "content-length": "400", "x-tenant-id": "alice"}
        ticket = evaluate(request_info(headers, fields), runtime())
        assert isinstance(ticket, Ticket), path
        assert (ticket.max_tokens, ticket.sequences, ticket.first_byte_is_token) == (30, 1, True)


def test_max_tokens_estimate_is_clamped() -> None:
    for value, want in ((1e300, 1_000_000), (-5, 1), (True, 1), ("9", 9), ("x", 256)):
        ticket = evaluate(info(max_tokens=value), runtime())
        assert isinstance(ticket, Ticket) and ticket.max_tokens == want


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"json_error": True}, Reason.INVALID_JSON),
        ({"model_missing": True}, Reason.MISSING_MODEL),
        ({"model": 3.0}, Reason.INVALID_MODEL),
        ({"model": "nope"}, Reason.MODEL_NOT_FOUND),
        ({"model": "m2"}, Reason.MODEL_NOT_ALLOWED),
    ],
)
def test_body_problems(fields: dict[str, Any], reason: Reason) -> None:
    rejected(evaluate(info(**fields), runtime()), reason)


def body_of(headers: dict[str, str], fields: dict[str, Any]) -> Rejection:
    result = evaluate(request_info({"x-tenant-id": "alice", **headers}, fields), runtime())
    assert isinstance(result, Rejection), result
    return result


def test_a_compressed_body_that_decompressed_to_nothing_is_not_json() -> None:
    """Envoy's decompressor passes on nothing it cannot undo; json_to_metadata then sees
    no body, so no `model`. The header the client sent (kept in metadata) tells."""
    nothing = {"content-length": "0"}
    got = body_of(nothing, {"content_encoding": "gzip", "model_missing": True})
    assert (got.reason, got.message) == (Reason.INVALID_JSON, "request body is not valid JSON")
    for empty in ({}, {"content_encoding": "identity"}):
        got = body_of(nothing, {**empty, "model_missing": True})
        assert got.reason is Reason.MISSING_MODEL, empty


def test_an_encoding_envoy_left_is_named_as_the_client_sent_it() -> None:
    got = body_of({"content-encoding": "gzip"}, {"content_encoding": "gzip, gzip"})
    assert got.reason is Reason.UNSUPPORTED_ENCODING
    want = "Content-Encoding 'gzip, gzip' is not supported; send one of gzip, br, zstd or none"
    assert got.message == want
    # Without the metadata (a test, the control API): the header as it arrived.
    got = body_of({"content-encoding": "deflate"}, {})
    assert "'deflate'" in got.message


def test_tenant_header_rules() -> None:
    rt = runtime()
    rejected(identify(info(None), rt), Reason.MISSING_TENANT)
    for bad in ("a b", "x" * 129, "é", "a\r\nb", "", "abc\n"):
        rejected(identify(info(bad), rt), Reason.INVALID_TENANT)
    twice = rejected(identify(info("alice,bob"), rt), Reason.INVALID_TENANT)  # sent twice
    assert twice.message == "X-Tenant-ID must be sent once"
    assert identify(info(None), runtime("default_tenant: bob\n")) == "bob"


def test_unknown_tenants_share_one_state_by_default() -> None:
    rt = runtime()
    names = set()
    for i in range(2000):
        ticket = evaluate(info(f"rotating-{i}", model="m2"), rt)
        assert isinstance(ticket, Ticket)
        names.add(ticket.tenant.name)
    assert names == {"unknown"}


def test_unknown_tenant_modes() -> None:
    rejected(
        evaluate(info("mallory", model="m2"), runtime("unknown_tenants: {mode: reject}\n")),
        Reason.UNKNOWN_TENANT,
    )
    ticket = evaluate(info("carol", model="m2"), runtime("unknown_tenants: {mode: individual}\n"))
    assert isinstance(ticket, Ticket)
    assert ticket.tenant.name == "unknown:carol" and not ticket.tenant.named


def test_api_keys_decide_the_tenant() -> None:
    keyed = BASE.replace(
        "alice: {weight: 2, models: [m1]}", f"alice: {{api_keys: [{hash_key('sk-alice')}]}}"
    )
    rt = runtime(base=keyed)
    assert identify(info("bob", auth="Bearer sk-alice"), rt) == "alice"  # header ignored
    assert identify(info(None, auth="bearer   sk-alice "), rt) == "alice"
    rejected(identify(info("alice"), rt), Reason.INVALID_API_KEY)
    rejected(identify(info("alice", auth="Bearer sk-wrong"), rt), Reason.INVALID_API_KEY)
    rejected(identify(info("alice", auth="Basic sk-alice"), rt), Reason.INVALID_API_KEY)
    # Anthropic's SDKs send the bare key as x-api-key; a Bearer key is read first.
    headers = {"x-tenant-id": "bob", "x-api-key": " sk-alice "}
    assert identify(request_info(headers, {"model": "m1"}), rt) == "alice"
    headers["authorization"] = "Bearer sk-wrong"
    rejected(identify(request_info(headers, {"model": "m1"}), rt), Reason.INVALID_API_KEY)
    empty = request_info({"x-api-key": "  "}, {"model": "m1"})
    assert "x-api-key" in rejected(identify(empty, rt), Reason.INVALID_API_KEY).message


def test_rejection_renders_openai_error_with_retry_after() -> None:
    r = Rejection(Reason.QUEUE_TIMEOUT, "busy", retry_after_s=2.2)
    assert r.status == 503
    assert ("retry-after", "3") in r.headers()
    assert r.body() == (
        b'{"error":{"message":"busy","type":"service_unavailable",'
        b'"param":null,"code":"queue_timeout"}}'
    )
    codes = [reason.code for reason in Reason]
    assert len(codes) == len(set(codes))  # no two reasons share a code (no enum aliases)


@pytest.mark.parametrize(
    ("reason", "error_type"),
    [
        (Reason.INVALID_JSON, "invalid_request_error"),
        (Reason.INVALID_API_KEY, "authentication_error"),
        (Reason.MODEL_NOT_ALLOWED, "permission_error"),
        (Reason.MODEL_NOT_FOUND, "not_found_error"),
        (Reason.METHOD_NOT_ALLOWED, "invalid_request_error"),
        (Reason.BODY_TOO_LARGE, "request_too_large"),
        (Reason.UNSUPPORTED_ENCODING, "invalid_request_error"),
        (Reason.QUEUE_FULL, "rate_limit_error"),
        (Reason.INSUFFICIENT_QUOTA, "rate_limit_error"),
        (Reason.QUEUE_TIMEOUT, "overloaded_error"),
        (Reason.STREAM_IDLE_TIMEOUT, "timeout_error"),
    ],
)
def test_rejection_renders_anthropics_error_on_its_api(reason: Reason, error_type: str) -> None:
    r = Rejection(reason, 'say "why"', retry_after_s=1.0)
    assert json.loads(r.body(anthropic=True)) == {
        "type": "error",
        "error": {"type": error_type, "message": 'say "why"'},
    }
    assert ("retry-after", "1") in r.headers()  # the same headers and status either way


def test_models_listed_are_those_the_caller_may_use() -> None:
    rt = runtime()
    assert visible_models(info("alice"), rt) == ["m1"]
    assert visible_models(info("bob"), rt) == ["m1", "m2"]
    assert visible_models(info(None), rt) == ["m1", "m2"]  # no tenant named, no keys: all
    rejected(visible_models(info("a b"), rt), Reason.INVALID_TENANT)
    strict = runtime("unknown_tenants: {mode: reject}\n")
    rejected(visible_models(info("mallory"), strict), Reason.UNKNOWN_TENANT)


ADAPTERS = """
version: 1
tenants:
  alice: {models: [alice-lora]}
  bob: {}
engines:
  a: {kind: sim, models: [base], adapters: {alice-lora: /adapters/alice}, max_inflight: 4}
  b: {kind: sim, models: [base], adapters: {alice-lora: /adapters/alice}, max_inflight: 4}
  other: {kind: sim, models: [small]}
"""


def test_an_adapter_is_a_model_of_its_engines_queue() -> None:
    """Tenants on the base model and on its adapters share one engine, so one fair
    queue; a tenant may be kept to its adapter."""
    rt = runtime(base=ADAPTERS)
    assert rt.model_to_pool == {"base": "a+b", "alice-lora": "a+b", "small": "other"}
    on_adapter = evaluate(info("alice", model="alice-lora"), rt)
    on_base = evaluate(info("bob", model="base"), rt)
    assert isinstance(on_adapter, Ticket) and isinstance(on_base, Ticket)
    assert on_adapter.pool == on_base.pool == "a+b"
    rejected(evaluate(info("alice", model="base"), rt), Reason.MODEL_NOT_ALLOWED)
    assert visible_models(info("alice"), rt) == ["alice-lora"]
    assert visible_models(info("bob"), rt) == ["alice-lora", "base", "small"]


def test_replicas_must_load_the_same_adapters() -> None:
    with pytest.raises(PolicyError, match="replicas of a model must serve the same models"):
        runtime(
            base=ADAPTERS.replace(
                "b: {kind: sim, models: [base], adapters: {alice-lora:",
                "b: {kind: sim, models: [base], adapters: {bob-lora:",
            )
        )


def test_replicas_must_load_an_adapter_from_the_same_place() -> None:
    moved = ADAPTERS.replace(
        "b: {kind: sim, models: [base], adapters: {alice-lora: /adapters/alice}",
        "b: {kind: sim, models: [base], adapters: {alice-lora: /adapters/alice-v2}",
    )
    with pytest.raises(PolicyError, match="a loads it from /adapters/alice; replicas answer"):
        runtime(base=moved)


def test_with_keys_the_models_listed_need_a_key() -> None:
    keyed = BASE.replace("alice: {weight: 2,", f"alice: {{api_keys: [{hash_key('k1')}],")
    rt = runtime(base=keyed)
    assert visible_models(info(None, auth="Bearer k1"), rt) == ["m1"]
    for auth in (None, "Bearer nope", "Bearer k1,Bearer k2"):
        rejected(visible_models(info("bob", auth=auth), rt), Reason.INVALID_API_KEY)


def test_a_header_sent_twice_is_both_values() -> None:
    pairs = [("X-Tenant-ID", "alice"), ("x-tenant-id", "bob"), ("Host", "h")]
    assert combined_headers(pairs) == {"x-tenant-id": "alice,bob", "host": "h"}
