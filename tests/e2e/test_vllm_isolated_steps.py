"""vLLM with the scheduler of ``isolate_prefills: step``
(``--scheduler-cls fairlane.engines.vllm_scheduler.isolated_prefill_steps``), the real
engine on CPU: the worse priority's decodes are left out of every step that prefills a
better prompt and come back in the next, many times over their answers. That sends
vLLM's model runner down its path for running requests left out of a step (dropped from
its persistent batch, added back with their tokens), so every answer must still come
whole. tests/e2e/test_vllm_scheduler.py checks the steps themselves.

Started as a user would start vLLM with the flag; Fairlane plays no part but its module.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN

MODEL = "tiny-llama"
SCHEDULER = "fairlane.engines.vllm_scheduler.isolated_prefill_steps"
TIMEOUT = aiohttp.ClientTimeout(total=180)
HEAVY_TOKENS, LIGHT_TOKENS = 200, 4
# Priorities as Fairlane gives them: levels 0 and 3, ranks under them.
LIGHT, HEAVY = 1, 3 * PRIORITY_LEVEL_SPAN + 5


async def complete(
    session: aiohttp.ClientSession,
    url: str,
    priority: int,
    prompt_tokens: int,
    max_tokens: int,
    started: asyncio.Event | None = None,
) -> tuple[int, str | None, int]:
    """Stream one completion; returns the usage's completion tokens, the finish reason,
    and how many token ids the chunks carried (vLLM may merge several tokens into one
    chunk when the reader lags, so chunks are not counted)."""
    body = {
        "model": MODEL,
        "prompt": [7] * prompt_tokens,  # token ids: the tiny tokenizer's text lengths vary
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "priority": priority,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
    }
    usage, finish, streamed = 0, None, 0
    async with session.post(url + "/v1/completions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]["completion_tokens"]
            for choice in chunk["choices"]:
                streamed += len(choice.get("token_ids") or [])
                finish = choice.get("finish_reason") or finish
                if started is not None:
                    started.set()
    return usage, finish, streamed


async def test_held_decodes_come_back_whole(external_vllm_factory: Any) -> None:
    vllm = external_vllm_factory("--scheduling-policy", "priority", "--scheduler-cls", SCHEDULER)
    assert f"custom scheduler class {SCHEDULER}" in vllm.log_path.read_text()
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        streaming = [asyncio.Event() for _ in range(4)]
        heavy = [
            asyncio.create_task(complete(session, vllm.url, HEAVY, 300, HEAVY_TOKENS, started))
            for started in streaming
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in streaming)), 120)
        # Light prompts one after another while the heavy answers decode: each one's
        # prefill step leaves the four heavy decodes out.
        light: list[tuple[int, str | None, int]] = []
        for _ in range(6):
            light.append(await complete(session, vllm.url, LIGHT, 200, LIGHT_TOKENS))
        overlapped = not any(task.done() for task in heavy)
        heavy_done = await asyncio.wait_for(asyncio.gather(*heavy), 150)
    assert overlapped, "the heavy answers ended before the light prompts came"
    assert light == [(LIGHT_TOKENS, "length", LIGHT_TOKENS)] * 6
    assert heavy_done == [(HEAVY_TOKENS, "length", HEAVY_TOKENS)] * 4
