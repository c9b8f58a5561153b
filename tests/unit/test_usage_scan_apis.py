"""envoy/usage.lua on the other APIs' answers: /v1/responses (OpenAI's Responses API)
and /v1/messages (Anthropic's Messages API), streamed and whole. The chat and
completions streams are in test_usage_scan.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.usage_lua import Scan, splits, usage_scanner


@pytest.fixture(scope="module")
def scan() -> Scan:
    return usage_scanner()


def responses_stream(tokens: int, completed: bool = True) -> bytes:
    """A /v1/responses stream as vLLM 0.32 writes it: typed events, `usage: null` while
    in progress, the counts (and their details) in `response.completed` only."""
    response: dict[str, Any] = {
        "id": "resp_1", "object": "response", "status": "in_progress", "output": [],
        "max_output_tokens": tokens, "usage": None,
    }  # fmt: skip
    part = {"item_id": "msg_1", "output_index": 0, "content_index": 0}
    events: list[tuple[str, dict[str, Any]]] = [
        ("response.created", {"response": response}),
        ("response.in_progress", {"response": response}),
        ("response.content_part.added", {**part, "part": {"type": "output_text", "text": ""}}),
        *(("response.output_text.delta", {**part, "delta": " tok"}) for _ in range(tokens)),
    ]
    if completed:
        text = " tok" * tokens
        turns = [1000 + turn for turn in range(10)]  # a 10-turn tool loop's counts
        details = {
            "cached_tokens": 0, "cache_write_tokens": 0,
            "input_tokens_per_turn": turns, "cached_tokens_per_turn": turns,
        }  # fmt: skip
        usage = {
            "input_tokens": 9, "input_tokens_details": details, "output_tokens": tokens,
            "output_tokens_details": {"reasoning_tokens": 0, "output_tokens_per_turn": []},
            "total_tokens": 9 + tokens,
        }  # fmt: skip
        events += [
            ("response.output_text.done", {**part, "text": text}),
            (
                "response.completed",
                {"response": {**response, "status": "completed", "usage": usage}},
            ),
        ]
    out = b""
    for seq, (kind, body) in enumerate(events):
        data = json.dumps({**body, "sequence_number": seq, "type": kind}, separators=(",", ":"))
        out += f"event: {kind}\ndata: {data}\n\n".encode()
    return out


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), tokens=st.integers(1, 20))
def test_a_responses_stream_is_read_from_its_completed_event(
    scan: Scan, cuts: list[int], tokens: int
) -> None:
    """/v1/responses names the counts input_tokens/output_tokens, with details between
    them that grow with the turns of a tool loop (here ~250 bytes)."""
    got = scan(splits(responses_stream(tokens), cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


def test_a_responses_stream_cut_short_counts_its_deltas(scan: Scan) -> None:
    """No `response.completed`: the text deltas are the count (`max_output_tokens` is
    no count of anything)."""
    assert scan([responses_stream(6, completed=False)]) == {"chunks": 6}


def test_a_whole_response_object_is_read(scan: Scan) -> None:
    body = {"object": "response", "max_output_tokens": 50, "usage": {
        "input_tokens": 31, "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": 12, "total_tokens": 43,
    }}  # fmt: skip
    got = scan([json.dumps(body).encode()])
    assert (got["prompt_tokens"], got["completion_tokens"]) == (31, 12)


def messages_stream(tokens: int, cached: int = 0, completed: bool = True) -> bytes:
    """A /v1/messages stream as vLLM 0.32 writes it: `message_start` with the first
    token, text deltas, the final counts in `message_delta`. Anthropic's input_tokens
    leave out the prompt tokens found in the prefix cache (`cache_read_input_tokens`)."""
    usage: dict[str, int] = {"input_tokens": 9 - cached, "output_tokens": 0}
    if cached:
        usage["cache_read_input_tokens"] = cached
    message = {"id": "msg_1", "type": "message", "role": "assistant", "content": [],
               "model": "m", "stop_reason": None, "usage": usage}  # fmt: skip
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"message": message}),
        ("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}}),
        *(
            ("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": " tok"}})
            for _ in range(tokens)
        ),
    ]
    if completed:
        events += [
            ("content_block_stop", {"index": 0}),
            (
                "message_delta",
                {
                    "delta": {"stop_reason": "max_tokens"},
                    "usage": {**usage, "output_tokens": tokens},
                },
            ),
            ("message_stop", {}),
        ]
    out = b""
    for kind, body in events:
        data = json.dumps({"type": kind, **body}, separators=(",", ":"))
        out += f"event: {kind}\ndata: {data}\n\n".encode()
    return out


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    tokens=st.integers(1, 20),
    cached=st.sampled_from([0, 4]),
)
def test_a_messages_stream_is_read_from_its_message_delta(
    scan: Scan, cuts: list[int], tokens: int, cached: int
) -> None:
    """Anthropic's counts, cached prompt tokens counted back in: the engine holds the
    whole prompt whether or not its prefix was cached."""
    got = scan(splits(messages_stream(tokens, cached), cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


def test_a_messages_stream_cut_short_counts_its_text_deltas(scan: Scan) -> None:
    """No `message_delta`: the deltas are the count, not message_start's zero (the
    prompt is exact from message_start)."""
    assert scan([messages_stream(5, completed=False)]) == {"chunks": 5, "prompt_tokens": 9}


def test_a_messages_thinking_and_tool_input_deltas_count(scan: Scan) -> None:
    deltas = [
        {"type": "thinking_delta", "thinking": "hm"},
        {"type": "text_delta", "text": "ok"},
        {"type": "input_json_delta", "partial_json": '{"a":'},
        {"type": "signature_delta", "signature": "abc"},  # not a decode step
    ]
    stream = b"".join(
        b"event: content_block_delta\ndata: "
        + json.dumps({"type": "content_block_delta", "index": 0, "delta": d}).encode()
        + b"\n\n"
        for d in deltas
    )
    assert scan([stream]) == {"chunks": 3}


def test_a_whole_message_object_is_read(scan: Scan) -> None:
    body = {"type": "message", "content": [{"type": "text", "text": "hi"}], "usage": {
        "input_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 8,
        "output_tokens": 12,
    }}  # fmt: skip
    got = scan([json.dumps(body).encode()])
    assert (got["prompt_tokens"], got["completion_tokens"]) == (31, 12)
