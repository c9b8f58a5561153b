"""The drop-in case: a vLLM the user already runs, put behind Fairlane by its URL.

The vLLM here is started by the test (its own process group, stopped by PID), exactly
as a user would start it; `fairlane serve` only knows its URL (`kind: external`). It
runs with `--api-key`, as production vLLMs often do: Fairlane sends it that key, which
it reads from its own environment (`api_key_env`), and clients send none.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from testkit.metrics import metric
from testkit.vllm_charges import alice_completes, charged_since, completion_tokens_charged
from testkit.vllm_races import MODEL, TIMEOUT

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "external-vllm.yaml"
VLLM_KEY = "sk-vllm-" + secrets.token_hex(16)
KEY_ENV = "FAIRLANE_E2E_VLLM_KEY"
STORE_ENV = "VLLM_ENABLE_RESPONSES_API_STORE"


@pytest.fixture(scope="module")
def vllm(external_vllm_factory: Any) -> Any:
    # With its response store on, as for `previous_response_id`: background responses too.
    engine = external_vllm_factory("--api-key", VLLM_KEY, env={STORE_ENV: "1"})
    print(f"\nexternal vLLM healthy after {engine.start_s:.1f}s")
    return engine


@pytest.fixture(scope="module")
def stack(stack_factory: Any, vllm: Any) -> Any:
    # The shipped example, pointed at this vLLM: what a user would do with it.
    policy = yaml.safe_load(EXAMPLE.read_text())
    policy.pop("listener", None)  # the test picks free ports
    (engine,) = policy["engines"].values()
    engine["url"] = vllm.url
    engine["models"] = [MODEL]
    engine["api_key_env"] = KEY_ENV
    stack = stack_factory(policy, healthy=False, env={KEY_ENV: VLLM_KEY})
    stack.wait_healthy(timeout_s=60)
    return stack


def test_example_config_validates() -> None:
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.cli", "check", str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    policy = yaml.safe_load(EXAMPLE.read_text())
    kinds = {e["kind"]: e for e in policy["engines"].values()}
    assert kinds["external"]["url"] == "http://127.0.0.1:8100"


async def test_requests_through_fairlane(stack: Any, vllm: Any) -> None:
    headers = {"x-tenant-id": "alice"}
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 8,
        "ignore_eos": True,
    }
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        # vLLM itself wants its key; through Fairlane, clients need none (it adds it).
        async with session.post(vllm.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 401
        wrong = {**headers, "authorization": "Bearer sk-not-vllms"}
        async with session.post(
            stack.url + "/v1/chat/completions", json=body, headers=wrong
        ) as resp:
            assert resp.status == 200, await resp.text()  # replaced by vLLM's own key
        async with session.get(stack.url + "/v1/models", headers=headers) as resp:
            assert resp.status == 200
            assert MODEL in [m["id"] for m in (await resp.json())["data"]]
        async with session.post(
            stack.url + "/v1/chat/completions", json=body, headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            reply = await resp.json()
        assert reply["system_fingerprint"].startswith("vllm-")
        assert reply["usage"]["completion_tokens"] == 8
        async with session.post(
            stack.url + "/v1/completions",
            json={
                "model": MODEL,
                "prompt": "Once",
                "max_tokens": 5,
                "stream": True,
                # vLLM's own count; without it Fairlane counts the text chunks, and a
                # random model's tokens often decode to "" (half a UTF-8 character).
                "stream_options": {"include_usage": True},
                "ignore_eos": True,
            },
            headers=headers,
        ) as resp:
            assert resp.status == 200
            text = await resp.text()
        assert text.rstrip().endswith("data: [DONE]")
        chunks = [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: {")]
        assert all(c["object"] == "text_completion" for c in chunks)
    # Fairlane charged alice the tokens vLLM reported (counted when each request ends).
    want = {"tenant": "alice", "model": MODEL, "kind": "completion"}
    deadline, counted = time.monotonic() + 15, 0.0
    while counted < 8 + 5 and time.monotonic() < deadline:
        counted = await metric(stack, "fairlane_tokens_total", **want)
        await asyncio.sleep(0.2)
    assert counted >= 8 + 5, counted


@pytest.mark.parametrize(
    ("prompt", "choices", "sequences"),
    [
        ("Once", 3, 3),
        (["Once", "Upon"], 2, 4),  # a batch: each prompt has n choices
        ("Once", " 3 ", 3),  # vLLM's pydantic model reads the text as 3; so does Fairlane
    ],
)
async def test_every_choice_of_n_is_served_and_charged(
    stack: Any, vllm: Any, prompt: str | list[str], choices: int | str, sequences: int
) -> None:
    before = await completion_tokens_charged(stack, "alice")
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "n": choices, "ignore_eos": True}
    reply = json.loads(await alice_completes(stack, body))
    assert sorted(c["index"] for c in reply["choices"]) == list(range(sequences))
    assert reply["usage"]["completion_tokens"] == 4 * sequences  # vLLM counts them all
    assert await charged_since(stack, before, 4 * sequences) == 4 * sequences
    # While they run, vLLM counts each sequence as a request, as Fairlane counts slots.
    body.update(max_tokens=400, stream=True)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        async with session.post(
            stack.url + "/v1/completions", json=body, headers={"x-tenant-id": "alice"}
        ) as resp:
            assert resp.status == 200
            await resp.content.readline()
            seen = []
            # vLLM updates its gauges once per logging step: poll a few of them.
            deadline = time.monotonic() + 10
            while (not seen or seen[-1][0] != sequences) and time.monotonic() < deadline:
                async with session.get(vllm.url + "/metrics") as metrics:
                    text = await metrics.text()
                engine = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in text.splitlines()
                    if line.startswith(("vllm:num_requests_running{", "vllm:num_requests_waiting{"))
                )
                ours = await metric(stack, "fairlane_inflight", engine="vllm")
                seen.append((engine, ours))
                await asyncio.sleep(0.2)
        assert seen[-1] == (sequences, sequences), seen


async def test_continuous_usage_stats_are_charged_once(stack: Any, vllm: Any) -> None:
    """vLLM's continuous_usage_stats put each choice's running count on every chunk and
    the total on the last: the tenant is charged the total, once (envoy/usage.lua)."""
    before = await completion_tokens_charged(stack, "alice")
    body = {
        "model": MODEL, "prompt": "Once", "max_tokens": 6, "n": 3, "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }  # fmt: skip
    text = await alice_completes(stack, body)
    chunks = [json.loads(x[6:]) for x in text.splitlines() if x.startswith("data: {")]
    assert all("usage" in c for c in chunks) and chunks[-1]["usage"]["completion_tokens"] == 18
    assert await charged_since(stack, before, 18) == 18


async def test_a_streamed_response_is_served_and_charged(stack: Any) -> None:
    """OpenAI's Responses API through Fairlane, with the unmodified SDK: vLLM's own
    event stream, and its `response.completed` usage charged (envoy/usage.lua)."""
    import openai  # vLLM's dependency

    before = await completion_tokens_charged(stack, "alice")
    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )

    def stream() -> tuple[list[str], Any]:
        items = [{"role": "user", "content": "Once upon a time"}]
        with client.responses.stream(model=MODEL, input=items, max_output_tokens=7) as events:
            kinds = [event.type for event in events]
            return kinds, events.get_final_response()

    kinds, final = await asyncio.to_thread(stream)
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.usage is not None and 1 <= final.usage.output_tokens <= 7
    charged = await charged_since(stack, before, final.usage.output_tokens)
    assert charged == final.usage.output_tokens


async def test_a_background_response_is_refused(stack: Any, vllm: Any) -> None:
    """vLLM answers a background response before generating it, so its work would run
    after the request ended, outside Fairlane's slot, queue and limits: Fairlane refuses
    it, in any spelling vLLM reads as true."""
    import openai

    body = {"model": MODEL, "input": "Once upon a time", "max_output_tokens": 64}
    auth = {"authorization": f"Bearer {VLLM_KEY}"}
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        direct = {**body, "background": "1"}
        async with session.post(vllm.url + "/v1/responses", json=direct, headers=auth) as resp:
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
    assert answer["status"] == "queued" and answer["output"] == [], answer  # not run yet

    client = openai.OpenAI(
        base_url=stack.url + "/v1", api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )
    # The SDK's own parameter, and a text vLLM reads as true.
    for extra in ({"background": True}, {"extra_body": {"background": "1"}}):
        with pytest.raises(openai.BadRequestError) as refused:
            await asyncio.to_thread(client.responses.create, **body, **extra)
        assert refused.value.code == "unsupported_parameter"
        assert "`background` responses are not served here" in refused.value.message


async def test_anthropics_messages_api_is_served_and_charged(stack: Any) -> None:
    """Anthropic's Messages API, which vLLM serves, through Fairlane with the unmodified
    `anthropic` SDK: vLLM's messages and event stream, `message_delta`'s usage
    charged, and Fairlane's own refusal in Anthropic's shape."""
    import anthropic  # a dev dependency

    client = anthropic.Anthropic(
        base_url=stack.url, api_key="unused", default_headers={"X-Tenant-ID": "alice"}
    )
    prompt = [{"role": "user", "content": "Once upon a time"}]

    def create_and_stream() -> tuple[Any, list[str], Any]:
        reply = client.messages.create(model=MODEL, max_tokens=5, messages=prompt)
        with client.messages.stream(model=MODEL, max_tokens=7, messages=prompt) as events:
            kinds = [event.type for event in events]
            return reply, kinds, events.get_final_message()

    before = await completion_tokens_charged(stack, "alice")
    reply, kinds, final = await asyncio.to_thread(create_and_stream)
    assert reply.type == "message" and 1 <= reply.usage.output_tokens <= 5
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert 1 <= final.usage.output_tokens <= 7
    want = reply.usage.output_tokens + final.usage.output_tokens
    assert await charged_since(stack, before, want) == want
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="nope", max_tokens=5, messages=prompt)
    assert info.value.body == {
        "type": "error",
        "error": {"type": "not_found_error", "message": "The model `nope` does not exist."},
    }


async def test_the_tokenizer_endpoints_are_served(stack: Any) -> None:
    """vLLM's /tokenize and /detokenize, and the Messages API's count_tokens, routed to
    the model's engine with its key, outside the fair queue."""
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            headers = {"x-tenant-id": "alice"}
            async with session.post(stack.url + path, json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                answer: dict[str, Any] = await resp.json()
                return answer

        tokens = await post("/tokenize", {"model": MODEL, "prompt": "Once upon a time"})
        assert tokens["count"] == len(tokens["tokens"]) > 0
        text = await post("/detokenize", {"model": MODEL, "tokens": tokens["tokens"]})
        assert "upon a time" in text["prompt"]
        messages = [{"role": "user", "content": "Once upon a time"}]
        counted = await post("/v1/messages/count_tokens", {"model": MODEL, "messages": messages})
        assert counted["input_tokens"] > 0
