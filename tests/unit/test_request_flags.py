"""The body's fields as vLLM reads them: every spelling its pydantic models take as
true, and the token limit it uses. A Responses request with `background` set is
refused: vLLM, with its response store on, answers such a request at once and generates
it afterwards, outside Fairlane's slot, queue and limits."""

from __future__ import annotations

from typing import Any

import pytest

from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.pipeline import Ticket, evaluate
from fairlane.extproc.request import request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import parse_policy

RUNTIME = compile_policy(
    parse_policy("version: 1\ntenants: {alice: {}}\nengines: {e: {kind: sim, models: [m]}}\n"),
    1,
)


def decide(path: str, **fields: Any) -> Ticket | Rejection:
    headers = {":path": path, "content-length": "100", "x-tenant-id": "alice"}
    return evaluate(request_info(headers, {"model": "m", **fields}), RUNTIME)


# As json_to_metadata hands them over: JSON true, numbers as floats, texts as sent.
@pytest.mark.parametrize("value", [True, 1.0, "1", "true", "True", "yes", "on", "t", "Y"])
def test_any_value_the_engine_could_read_as_true_is_refused(value: Any) -> None:
    decision = decide("/v1/responses", background=value)
    assert isinstance(decision, Rejection), decision
    assert decision.reason is Reason.UNSUPPORTED_PARAMETER
    assert decision.status == 400 and decision.tenant == "alice"
    assert decision.message.startswith("`background` responses are not served here")


# null (and objects or lists) reach the worker as a value of no primitive type; vLLM
# refuses 0.5, "2", " true" and objects itself.
@pytest.mark.parametrize(
    "value", [False, 0.0, "false", "FALSE", "0", "no", "off", object(), 0.5, "2", " true"]
)
def test_a_background_the_engine_would_not_run_is_passed_on(value: Any) -> None:
    assert isinstance(decide("/v1/responses", background=value), Ticket)


def test_background_counts_on_the_responses_api_only() -> None:
    """Chat and completions have no such field: vLLM ignores it there."""
    assert isinstance(decide("/v1/responses"), Ticket)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
        assert isinstance(decide(path, background=True, max_tokens=8.0), Ticket)
    rejected = decide("/v1/responses?x=1", background=True)
    assert isinstance(rejected, Rejection)


@pytest.mark.parametrize(("value", "streams"), [(True, True), ("1", True), ("false", False)])
def test_a_stream_is_a_stream_however_spelled(value: Any, streams: bool) -> None:
    """Its first byte is then its first token: the TTFT Fairlane records."""
    ticket = decide("/v1/chat/completions", stream=value)
    assert isinstance(ticket, Ticket) and ticket.first_byte_is_token is streams


def test_a_null_max_completion_tokens_leaves_max_tokens_in_force() -> None:
    """As in vLLM: null (which reaches the worker as a value of no primitive type)
    is no limit of its own."""
    null = object()
    for completion, limit in ((null, 900), (40.0, 40), ("40", 40)):
        ticket = decide("/v1/chat/completions", max_completion_tokens=completion, max_tokens=900.0)
        assert isinstance(ticket, Ticket) and ticket.max_tokens == limit, completion
