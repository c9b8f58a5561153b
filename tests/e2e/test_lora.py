"""LoRA adapters: `fairlane serve` starting a real vLLM (CPU) with the tiny Llama and a
random adapter for it (`engines.<name>.adapters`), and routing tenants to either."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

MODEL = "tiny-llama"
ADAPTER = "support-lora"
TIMEOUT = aiohttp.ClientTimeout(total=60)


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A rank-8 adapter for the tiny Llama, made by the module users would run."""
    out = tmp_path_factory.mktemp("adapters") / ADAPTER
    argv = [sys.executable, "-P", "-m", "fairlane.engines.tinylora", str(tiny_model), str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return out


@pytest.fixture(scope="module")
def stack(stack_factory: Any, vllm_engine: Any, adapter: Path) -> Any:
    policy = {
        "version": 1,
        "tenants": {"support": {"models": [ADAPTER]}, "research": {}},
        "engines": {"tiny": vllm_engine(adapters={ADAPTER: str(adapter)}, max_inflight=8)},
    }
    stack = stack_factory(policy, healthy=False)
    start = time.monotonic()
    stack.wait_healthy(timeout_s=300)
    print(f"\nmanaged vLLM with a LoRA adapter healthy after {time.monotonic() - start:.1f}s")
    return stack


async def get(url: str, tenant: str = "research") -> Any:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url, headers={"x-tenant-id": tenant}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def complete(stack: Any, model: str, tenant: str = "research") -> tuple[int, Any]:
    # Greedy and a fixed length: the same model gives the same text every time.
    body = {"model": model, "prompt": "Hello there", "max_tokens": 8, "temperature": 0}
    body["ignore_eos"] = True
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(
            stack.url + "/v1/completions", json=body, headers={"x-tenant-id": tenant}
        ) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def test_vllm_loaded_the_adapter_and_fairlane_lists_it(stack: Any, adapter: Path) -> None:
    port = stack.engine_states()["tiny"]["port"]
    engine_cards = {c["id"]: c for c in (await get(f"http://127.0.0.1:{port}/v1/models"))["data"]}
    assert engine_cards[ADAPTER]["parent"] == MODEL  # from --lora-modules
    assert engine_cards[ADAPTER]["root"] == str(adapter)
    cards = {c["id"]: c for c in (await get(stack.url + "/v1/models"))["data"]}
    assert set(cards) == {MODEL, ADAPTER}
    assert cards[ADAPTER]["parent"] == MODEL
    support = await get(stack.url + "/v1/models", tenant="support")
    assert [c["id"] for c in support["data"]] == [ADAPTER]


async def test_the_adapter_is_applied_not_an_alias(stack: Any) -> None:
    base = [await complete(stack, MODEL) for _ in range(2)]
    tuned = await complete(stack, ADAPTER, tenant="support")
    for status, reply in [*base, tuned]:
        assert status == 200, reply
        assert reply["usage"]["completion_tokens"] == 8
    assert base[0][1]["choices"][0]["text"] == base[1][1]["choices"][0]["text"]  # greedy
    assert tuned[1]["model"] == ADAPTER
    assert tuned[1]["choices"][0]["text"] != base[0][1]["choices"][0]["text"]


async def test_a_tenant_kept_to_its_adapter(stack: Any) -> None:
    status, reply = await complete(stack, MODEL, tenant="support")
    assert status == 403, reply
    assert reply["error"]["code"] == "model_not_allowed"
    assert reply["error"]["message"] == f"tenant 'support' may not use `{MODEL}`"
    status, reply = await complete(stack, ADAPTER, tenant="support")
    assert status == 200, reply
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(stack.url + "/metrics") as resp,
    ):
        text = await resp.text()
    want = f'fairlane_tokens_total{{kind="completion",model="{ADAPTER}",tenant="support"}} '
    charged = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(want)]
    assert charged and charged[0] >= 8, text[-2000:]
