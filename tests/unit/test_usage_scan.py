"""envoy/usage.lua, the filter that reads token usage off the response as it passes, run
under LuaJIT (as in Envoy) with a stand-in for Envoy's stream handle. Envoy runs it
through the real data path in tests/integration/test_request_path.py and
test_admission_accounting.py."""

from __future__ import annotations

import itertools
import json
from importlib import resources
from typing import Any

import lupa.luajit21 as luajit  # a dev dependency: no silent skip without it
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

# Envoy's handle, as much of it as the script uses: body chunks, then dynamic metadata.
HANDLE = """
return function(chunks)
  local meta = {}
  local handle = {}
  function handle:bodyChunks()
    local i = 0
    return function()
      i = i + 1
      local s = chunks[i]
      if s == nil then return nil end
      return {
        length = function(_) return #s end,
        getBytes = function(_, start, len) return string.sub(s, start + 1, start + len) end,
      }
    end
  end
  function handle:streamInfo()
    return {dynamicMetadata = function(_)
      return {set = function(_, ns, key, value) meta[ns .. "/" .. key] = value end}
    end}
  end
  envoy_on_response(handle)
  return meta
end
"""


@pytest.fixture(scope="module")
def scan() -> Any:
    runtime = luajit.LuaRuntime(encoding=None)
    runtime.execute(resources.files("fairlane.envoy").joinpath("usage.lua").read_text())
    run = runtime.execute(HANDLE)

    def scan(chunks: list[bytes]) -> dict[str, int]:
        meta = run(runtime.table_from(chunks))
        return {k.decode().split("/")[1]: int(v) for k, v in meta.items()}

    return scan


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body).encode() + b"\n\n"


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


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_a_response_without_usage_counts_its_deltas(scan: Any) -> None:
    assert scan([chat_stream(7)]) == {"chunks": 7}


def delta_stream(deltas: list[dict[str, Any]]) -> bytes:
    chunks = [{"choices": [{"index": 0, "delta": d, "finish_reason": None}]} for d in deltas]
    return b"".join(event(c) for c in chunks) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("reasoning_key", ["reasoning", "reasoning_content"])
def test_a_reasoning_models_thinking_counts_as_well_as_its_answer(
    scan: Any, reasoning_key: str
) -> None:
    """Without usage, a thinking model's stream is mostly `reasoning` deltas (vLLM's
    name since 0.10, `reasoning_content` before): charged as content, not as nothing."""
    thinking = [{reasoning_key: f" step {i}"} for i in range(30)]
    answer = [{"content": " yes"}, {"content": "."}]
    got = scan([delta_stream([{"role": "assistant", "content": ""}, *thinking, *answer])])
    assert got == {"chunks": 32}


def test_tool_call_arguments_count_and_its_name_does_not(scan: Any) -> None:
    call = {"index": 0, "id": "call_1", "type": "function"}
    pieces = ['{"', "city", '": "', "Paris", '"}']
    deltas = [
        {"role": "assistant", "content": None},
        {"tool_calls": [{**call, "function": {"name": "get_weather", "arguments": ""}}]},
        *({"tool_calls": [{"index": 0, "function": {"arguments": a}}]} for a in pieces),
    ]
    assert scan([delta_stream(deltas)]) == {"chunks": 5}


def test_the_final_usage_chunk_is_read(scan: Any) -> None:
    got = scan([chat_stream(7, include_usage=True)])
    assert got == {"chunks": 7, "prompt_tokens": 9, "completion_tokens": 7}


@pytest.mark.parametrize("choices", [1, 3])
def test_with_continuous_usage_the_last_count_wins(scan: Any, choices: int) -> None:
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
    scan: Any, cuts: list[int], continuous: bool, tokens: int
) -> None:
    """Envoy hands the body over in chunks cut anywhere, a number's digits included."""
    data = chat_stream(tokens, include_usage=True, continuous=continuous)
    got = scan(splits(data, cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, 10_000), max_size=12), tokens=st.integers(1, 20))
def test_a_stream_without_usage_counts_each_whole_delta_once(
    scan: Any, cuts: list[int], tokens: int
) -> None:
    """A delta cut in two is missed (a token in a fallback count; scanning the joins
    would double the filter's cost per chunk), never counted twice."""
    data = chat_stream(tokens, choices=2)
    events = [e + b"\n\n" for e in data.split(b"\n\n") if e]
    assert scan(events) == {"chunks": 2 * tokens}
    pieces = splits(data, cuts)
    assert 2 * tokens - (len(pieces) - 1) <= scan(pieces)["chunks"] <= 2 * tokens


def test_usage_written_inside_the_content_is_text_not_usage(scan: Any) -> None:
    """A model that writes a usage object gets it escaped in the JSON string."""
    text = 'x "usage": {"prompt_tokens": 0, "completion_tokens": 0, "content": "y"}'
    body = {"choices": [{"message": {"content": text}}], "usage": usage(40, 30)}
    got = scan([json.dumps(body).encode()])
    assert (got["prompt_tokens"], got["completion_tokens"]) == (40, 30)
    faked = {"choices": [{"message": {"content": text}}]}
    assert "completion_tokens" not in scan([json.dumps(faked).encode()])


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
    scan: Any, cuts: list[int], tokens: int
) -> None:
    """/v1/responses names the counts input_tokens/output_tokens, with details between
    them that grow with the turns of a tool loop (here ~250 bytes)."""
    got = scan(splits(responses_stream(tokens), cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


def test_a_responses_stream_cut_short_counts_its_deltas(scan: Any) -> None:
    """No `response.completed`: the text deltas are the count (`max_output_tokens` is
    no count of anything)."""
    assert scan([responses_stream(6, completed=False)]) == {"chunks": 6}


def test_a_whole_response_object_is_read(scan: Any) -> None:
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
    scan: Any, cuts: list[int], tokens: int, cached: int
) -> None:
    """Anthropic's counts, cached prompt tokens counted back in: the engine holds the
    whole prompt whether or not its prefix was cached."""
    got = scan(splits(messages_stream(tokens, cached), cuts))
    assert (got["prompt_tokens"], got["completion_tokens"]) == (9, tokens)


def test_a_messages_stream_cut_short_counts_its_text_deltas(scan: Any) -> None:
    """No `message_delta`: the deltas are the count, not message_start's zero (the
    prompt is exact from message_start)."""
    assert scan([messages_stream(5, completed=False)]) == {"chunks": 5, "prompt_tokens": 9}


def test_a_messages_thinking_and_tool_input_deltas_count(scan: Any) -> None:
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


def test_a_whole_message_object_is_read(scan: Any) -> None:
    body = {"type": "message", "content": [{"type": "text", "text": "hi"}], "usage": {
        "input_tokens": 20, "cache_creation_input_tokens": 3, "cache_read_input_tokens": 8,
        "output_tokens": 12,
    }}  # fmt: skip
    got = scan([json.dumps(body).encode()])
    assert (got["prompt_tokens"], got["completion_tokens"]) == (31, 12)
