"""envoy/usage.lua, the filter that reads token usage off the response as it passes, run
under LuaJIT (as in Envoy) with a stand-in for Envoy's stream handle. Envoy runs it
through the real data path in tests/integration/test_request_path.py and
test_admission_accounting.py; the other APIs' answers are in
test_usage_scan_apis.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from testkit.usage_lua import Scan, event, splits, usage_scanner


@pytest.fixture(scope="module")
def scan() -> Scan:
    return usage_scanner()


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt,
        "total_tokens": prompt + completion,
        "completion_tokens": completion,
    }


def chat_stream(
    tokens: int, choices: int = 1, include_usage: bool = False, continuous: bool = False
) -> bytes:
    """A chat stream as vLLM writes it: with ``continuous_usage_stats`` every event
    carries the running count of its own choice; the final usage chunk the total."""
    out = b""
    for index in range(choices):
        for done in range(tokens + 1):
            delta = {"role": "assistant", "content": ""} if done == 0 else {"content": " tok"}
            chunk: dict[str, Any] = {
                "object": "chat.completion.chunk",
                "choices": [{"index": index, "delta": delta, "finish_reason": None}],
            }
            if continuous:
                chunk["usage"] = usage(9, done)
            out += event(chunk)
    if include_usage:
        out += event({"choices": [], "usage": usage(9, tokens * choices)})
    return out + b"data: [DONE]\n\n"


def test_a_response_without_usage_counts_its_deltas(scan: Scan) -> None:
    assert scan([chat_stream(7)]) == {"chunks": 7}


def delta_stream(deltas: list[dict[str, Any]]) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    return b"".join(event(c) for c in chunks) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("reasoning_key", ["reasoning", "reasoning_content"])
def test_a_reasoning_models_thinking_counts_as_well_as_its_answer(
    scan: Scan, reasoning_key: str
) -> None:
    """Without usage, a thinking model's stream is mostly `reasoning` deltas (vLLM's
    name since 0.10, `reasoning_content` before): charged as content, not as nothing."""
    thinking = [{reasoning_key: f" step {i}"} for i in range(30)]
    answer = [{"content": " yes"}, {"content": "."}]
    got = scan([delta_stream([{"role": "assistant", "content": ""}, *thinking, *answer])])
    assert got == {"chunks": 32}


def test_tool_call_arguments_count_and_its_name_does_not(scan: Scan) -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    pieces = ['{"', "city", '": "', "Paris", '"}']
    deltas = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]},
        *({"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in pieces),
    ]
    assert scan([delta_stream(deltas)]) == {"chunks": 5}


def test_the_final_usage_chunk_is_read(scan: Scan) -> None:
    got = scan([chat_stream(7, include_usage=True)])
    assert got == {"chunks": 7, "prompt_tokens": 9, "completion_tokens": 7}


@pytest.mark.parametrize("choices", [1, 3])
def test_with_continuous_usage_the_last_count_wins(scan: Scan, choices: int) -> None:
    """Every event carries a running count (vLLM's `continuous_usage_stats`, or
    `--enable-force-include-usage`); the first one in a chunk was read before."""
    data = chat_stream(12, choices, include_usage=True, continuous=True)
    for size in (64, 200, 333, len(data)):
        chunks = [data[i : i + size] for i in range(0, len(data), size)]
        got = scan(chunks)
        assert got["completion_tokens"] == 12 * choices, size
        assert got["prompt_tokens"] == 9


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 10_000), max_size=12),
    continuous=st.booleans(),
    tokens=st.integers(1, 20),
)
def test_any_split_of_the_stream_reads_the_same_usage(
    scan: Scan, cuts: list[int], continuous: bool, tokens: int
) -> None:
    """Envoy hands the body over in chunks cut anywhere, a number's digits included."""
    data = chat_stream(tokens, include_usage=True, continuous=continuous)
    got = scan(splits(data, cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), tokens=st.integers(1, 20))
def test_a_stream_without_usage_counts_each_whole_delta_once(
    scan: Scan, cuts: list[int], tokens: int
) -> None:
    """A delta cut in two is missed (a token in a fallback count; scanning the joins
    would double the filter's cost per chunk), never counted twice."""
    data = chat_stream(tokens, choices=2)
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    assert scan(events) == {"chunks": 2 * tokens}
    pieces = splits(data, cuts)
    assert 2 * tokens - (len(pieces) - 1) <= scan(pieces)["chunks"] <= 2 * tokens


def test_usage_written_inside_the_content_is_text_not_usage(scan: Scan) -> None:
    """A model that writes a usage object gets it escaped in the JSON string."""
    text = 'x "usage": {"prompt_tokens": 0, "completion_tokens": 0, "content": "y"}'
    body = {"choices": [{"message": {"content": text}}], "usage": usage(40, 30)}
    got = scan([json.dumps(body).encode()])
    assert (got["prompt_tokens"], got["completion_tokens"]) == (40, 30)
    faked = {"choices": [{"message": {"content": text}}]}
    assert "completion_tokens" not in scan([json.dumps(faked).encode()])
