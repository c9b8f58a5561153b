"""envoy/prompts.lua, the filter that counts the prompts of a completions or pooling
batch (embeddings, classify, pooling, rerank, score), run under LuaJIT (as in Envoy) and
checked against Python's own JSON parser: what the engine will see. Envoy runs it through
the real data path in tests/integration/test_admission_accounting.py and test_pooling_apis.py."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import lupa.luajit21 as luajit  # a dev dependency: no silent skip without it
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.envoy.common import PROMPT_KEYS


@pytest.fixture(scope="module")
def script() -> Any:
    source = resources.files("fairlane.envoy").joinpath("prompts.lua").read_text()
    # The script keeps its functions local; returning one is the only addition.
    runtime = luajit.LuaRuntime(encoding=None)
    prompts = runtime.execute(source + "\nreturn prompts")

    def count_on(path: str, body: bytes) -> int:
        """The prompts of ``body`` on ``path``'s route: the keys its metadata names."""
        keys = runtime.table_from({key.encode(): True for key in PROMPT_KEYS[path]})
        return int(prompts(body, keys))

    return count_on


@pytest.fixture(scope="module")
def count(script: Any) -> Any:
    """The prompts of a completions body."""
    return lambda body: script("/v1/completions", body)


def engine_count(body: str) -> int:
    """Prompts as vLLM and SGLang take them: the last `prompt` key wins; a list of texts
    or of token-id lists is one prompt per item (a list of objects, which only a score
    takes, counts the same); anything else is one."""
    prompt = json.loads(body).get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list | dict):
        return len(prompt)
    return 1


@pytest.mark.parametrize(
    ("body", "want"),
    [
        ('{"model": "m", "prompt": "one text"}', 1),
        ('{"model": "m", "prompt": ["a", "b", "c"]}', 3),
        ('{"prompt": [1, 2, 3], "model": "m"}', 1),  # one prompt, as token ids
        ('{"prompt": [[1, 2], [3], [4, 5, 6]], "n": 2}', 3),
        ('{"prompt": []}', 1),
        ('{"prompt": [ "x" ]}', 1),
        ('{"model": "m"}', 1),
        # Brackets, commas and quotes inside strings are text.
        ('{"prompt": ["a],[\\"b\\", \\"", "c\\\\"], "stop": ["]"]}', 2),
        ('{"x": "\\"prompt\\": [\\"a\\", \\"b\\"]", "prompt": "p"}', 1),
        # Nested values before and after do not hide the key or shift the depth.
        ('{"x": [1, [2, {"prompt": ["a", "b"]}]], "prompt": ["a", "b"], "y": {"z": [1]}}', 2),
        ('{"logit_bias": {"1": 2}, "prompt": [["a"], ["b"]]}', 2),
        # The engines' parsers keep the last of duplicate keys, and decode escapes.
        ('{"prompt": "x", "prompt": ["a", "b", "c", "d"]}', 4),
        ('{"prompt": ["a", "b"], "prompt": "x"}', 1),
        ('{"prompt": "x", "pr\\u006fmpt": ["a", "b"]}', 2),
        ('{"prompt": "x", "\\u0070\\u0072\\u006F\\u006d\\u0070\\u0074": ["a", "b", "c"]}', 3),
    ],
)
def test_counts_what_the_engine_will_run(count: Any, body: str, want: int) -> None:
    assert engine_count(body) == want
    assert count(body.encode()) == want


@pytest.mark.parametrize(
    "body", [b"", b"[", b'{"prompt": ["a", "b"', b'{"prompt": "unterminated', b"not json"]
)
def test_a_body_that_is_not_json_counts_as_one(count: Any, body: bytes) -> None:
    assert count(body) == 1  # the engine answers 400; nothing to count


def test_a_long_batch_of_token_ids_is_scanned_by_item_not_by_token(count: Any) -> None:
    prompts = [[7] * 2000 for _ in range(500)]  # 1M token ids, 3 MB
    assert count(json.dumps({"prompt": prompts, "junk": [1] * 100_000}).encode()) == 500


def test_a_hostile_body_is_cut_short_and_counts_as_the_whole_engine(count: Any) -> None:
    """A million empty objects before the prompt would hold an Envoy worker thread for
    a second; past MAX_STEPS searches the body counts as MANY prompts instead."""
    body = '{"x": [' + ",".join(["{}"] * 1_000_000) + '], "prompt": "p"}'
    assert count(body.encode()) == 1_000_000


texts = st.text(alphabet=st.sampled_from('ab ,:[]{}"\\\n\u00e9'), max_size=8)
values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=12,
)
prompts = (
    texts
    | st.lists(texts, max_size=5)
    | st.lists(st.integers(0, 99), max_size=5)
    | st.lists(st.lists(st.integers(0, 99), max_size=4), max_size=5)
)


@settings(max_examples=400, deadline=None)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(["prompt", "model", "n", "x", "stop"]), prompts | values),
        max_size=6,
    ),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
)
def test_agrees_with_the_json_parser_on_any_body(
    count: Any, fields: list[tuple[str, Any]], ascii_only: bool, spaced: bool
) -> None:
    """Keys may repeat (written by hand: a dict cannot hold duplicates)."""
    sep = (", ", ": ") if spaced else (",", ":")
    members = [
        json.dumps(k, ensure_ascii=ascii_only)
        + sep[1]
        + json.dumps(v, ensure_ascii=ascii_only, separators=sep)
        for k, v in fields
    ]
    body = "{" + sep[0].join(members) + "}"
    assert count(body.encode()) == engine_count(body), body


@pytest.mark.parametrize(
    ("path", "body", "want"),
    [
        ("/v1/embeddings", '{"model": "m", "input": ["a", "b", "c"], "prompt": ["x"]}', 3),
        ("/v1/embeddings", '{"input": [[1, 2], [3]], "model": "m"}', 2),
        ("/v1/embeddings", '{"input": [1, 2, 3]}', 1),  # one input, as token ids
        ("/v1/completions", '{"input": ["a", "b", "c"], "prompt": ["x", "y"]}', 2),
        ("/v1/completions", '{"prompt": ["x", "y"]}', 2),
    ],
)
def test_an_embeddings_batch_is_counted_by_its_input(
    script: Any, path: str, body: str, want: int
) -> None:
    """/v1/embeddings runs each item of its `input` list as a sequence; `input` means
    nothing to completions (and `prompt` nothing to embeddings)."""
    assert script(path, body.encode()) == want


@pytest.mark.parametrize(
    ("path", "body", "want"),
    [
        ("/classify", '{"model": "m", "input": ["a", "b"]}', 2),
        ("/pooling", '{"input": [[1, 2], [3], [4]]}', 3),
        # A rerank is a (query, document) pair per document.
        ("/v1/rerank", '{"query": "q", "documents": ["a", "b", "c"], "top_n": 2}', 3),
        ("/rerank", '{"query": ["q1", "q2"], "documents": ["a"]}', 1),
        ("/v2/rerank", '{"query": "q", "documents": [{"content": []}, {"content": []}]}', 2),
        # A score pairs one text with many, or many with as many: the longer list.
        ("/v1/score", '{"text_1": "q", "text_2": ["a", "b", "c", "d"]}', 4),
        ("/score", '{"text_1": ["q1", "q2"], "text_2": ["a", "b"]}', 2),
        ("/score", '{"data_1": "q", "data_2": [{"content": []}, {"content": []}]}', 2),
        ("/v1/score", '{"queries": "q", "documents": ["a", "b", "c"]}', 3),
        ("/v1/score", '{"queries": ["q1", "q2", "q3", "q4", "q5"], "items": ["a"]}', 5),
        ("/v1/score", '{"text_2": ["a", "b"], "text_2": "c"}', 1),  # the last key wins
        ("/v1/score", '{"text_1": "q", "text_2": "a"}', 1),
    ],
)
def test_a_pooling_request_is_counted_by_its_own_lists(
    script: Any, path: str, body: str, want: int
) -> None:
    assert script(path, body.encode()) == want
