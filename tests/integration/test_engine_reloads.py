"""The supervisor with real simulator processes, across policy reloads: a raised queue
timeout, engines added, drained and restarted, and LoRA adapters as models of their
engine. Every test starts its own stack.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import aiohttp
import pytest

from testkit.engines import CHAT, engine_pid, post_chat, proc_cmdline
from testkit.metrics import metric_is
from testkit.waits import eventually

pytestmark = pytest.mark.integration


def _preset_of(pid: int) -> bytes:
    cmdline = proc_cmdline(pid)
    return cmdline[cmdline.index(b"--preset") + 1] if b"--preset" in cmdline else b""


async def test_a_raised_queue_timeout_applies_without_a_restart(stack_factory: Any) -> None:
    """Envoy is started with a bound on how long it lets the worker hold a queued
    request; a reload that raises queue.timeout_s past the value it started with must not
    turn longer waits into 503s (it did: Envoy ignored the longer hold and gave up at 5 s)."""
    engine = {
        "kind": "sim",
        "preset": "a100-8b",
        "models": ["m"],
        "max_inflight": 1,
        "queue": {"timeout_s": 1},
    }
    policy: dict[str, Any] = {"version": 1, "engines": {"e": engine}}
    stack = stack_factory(policy)
    engine["queue"] = {"timeout_s": 30}
    stack.write_policy(policy)
    applied = eventually(lambda: metric_is(stack, 2, "fairlane_config_generation"), 15)
    assert await applied, "the reload was not applied"
    async with aiohttp.ClientSession() as session:
        # ~1,100 steps of ~7 ms hold the only slot for about 8 s.
        long = {"model": "m", "max_tokens": 1100, "messages": [{"role": "user", "content": "x"}]}
        holder = asyncio.create_task(
            session.post(stack.url + CHAT, json=long, headers={"x-tenant-id": "a"})
        )
        await asyncio.sleep(0.5)
        start = time.monotonic()
        status, _, text = await post_chat(session, stack.url, "m")
        waited = time.monotonic() - start
        assert status == 200, (status, text, waited)
        assert waited > 6, waited  # it did wait past Envoy's 5 s default
        (await holder).release()


async def test_reload_adds_drains_and_restarts_engines(stack_factory: Any) -> None:
    policy: dict[str, Any] = {
        "version": 1,
        "listener": {"drain_grace_s": 20},
        "engines": {"e": {"kind": "sim", "preset": "h100-8b", "models": ["m"]}},
    }
    stack = stack_factory(policy)
    async with aiohttp.ClientSession() as session:
        body = {
            "model": "m",
            "max_tokens": 800,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
        async with session.post(stack.url + CHAT, json=body, headers={"x-tenant-id": "t"}) as resp:
            assert resp.status == 200
            await resp.content.readline()
            # Capacity changes apply live; a new engine starts; the preset change
            # restarts "e" only after this stream has finished.
            policy["engines"]["e"] = {
                "kind": "sim",
                "preset": "tiny",
                "models": ["m"],
                "max_inflight": 8,
            }
            policy["engines"]["f"] = {"kind": "sim", "preset": "tiny", "models": ["n"]}
            stack.write_policy(policy)
            rest = asyncio.create_task(resp.read())

            async def draining() -> bool:
                return bool(stack.engine_states()["e"]["state"] == "down")

            assert await eventually(draining, 10), "the changed engine was not taken out"
            await asyncio.sleep(1.5)  # three health probes, which the old process answers
            assert not rest.done(), "the stream ended before the drain could be checked"
            # New requests are not sent to the engine being drained (they would be cut
            # with it when the drain ends): they are refused, as documented.
            assert stack.engine_states()["e"]["state"] == "down"
            status, _, text = await post_chat(session, stack.url, "m")
            assert status == 503 and "engine_unavailable" in text, (status, text)
            text = (await rest).decode()
        assert text.rstrip().endswith("data: [DONE]")  # the stream was not cut
        deadline = time.monotonic() + 30
        states: dict[str, Any] = {}
        preset = b""
        while time.monotonic() < deadline:
            # "f" can be up while "e" is still the old engine, before its restart.
            states = stack.engine_states()
            if states.get("f", {}).get("state") == "up" and states["e"]["state"] == "up":
                with contextlib.suppress(AssertionError):  # between the old and the new
                    preset = _preset_of(engine_pid(states["e"]["port"]))
                if preset == b"tiny":
                    break
            await asyncio.sleep(0.2)
        assert preset == b"tiny"  # restarted with it
        for model in ("m", "n"):
            # `fairlane serve` told the worker as soon as it saw the file change, before
            # its supervisor started "f": the new model is known once its engine is up.
            status, _, text = await post_chat(session, stack.url, model)
            assert status == 200, text


async def test_lora_adapters_are_models_of_their_engine(stack_factory: Any) -> None:
    """An adapter is a model its engine serves: listed on its base, routed to that
    engine's one fair queue, charged under its own name, allowed per tenant; a reload
    that loads another restarts the engine with it."""
    engine = {
        "kind": "sim",
        "preset": "h100-8b",
        "models": ["base"],
        "adapters": {"alice-lora": "/adapters/alice"},
    }
    policy: dict[str, Any] = {
        "version": 1,
        "tenants": {"alice": {"models": ["alice-lora"]}, "bob": {}},
        "engines": {"e": engine},
    }
    stack = stack_factory(policy)

    async def chat(session: aiohttp.ClientSession, tenant: str, model: str) -> tuple[int, Any]:
        status, _, text = await post_chat(session, stack.url, model, tenant)
        return status, json.loads(text)

    async with aiohttp.ClientSession() as session:
        async with session.get(stack.url + "/v1/models", headers={"x-tenant-id": "bob"}) as resp:
            cards = {card["id"]: card for card in (await resp.json())["data"]}
        assert set(cards) == {"base", "alice-lora"}
        assert cards["alice-lora"]["parent"] == "base" and "parent" not in cards["base"]

        status, reply = await chat(session, "alice", "alice-lora")
        assert status == 200, reply
        assert reply["model"] == "alice-lora"
        status, reply = await chat(session, "alice", "base")
        assert status == 403, reply
        assert reply["error"]["code"] == "model_not_allowed"
        assert reply["error"]["message"] == "tenant 'alice' may not use `base`"
        # Charged from the access log, which Envoy sends once the response has ended.
        labels = {"kind": "completion", "model": "alice-lora", "tenant": "alice"}
        charged = eventually(lambda: metric_is(stack, 2, "fairlane_tokens_total", **labels), 10)
        assert await charged, await stack.metrics()

        engine["adapters"] = {**engine["adapters"], "bob-lora": "/adapters/bob"}
        stack.write_policy(policy)
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            status, reply = await chat(session, "bob", "bob-lora")
            if status == 200:
                break
            # Not known yet, then known while the engine restarts with it.
            waiting = {(404, "model_not_found"), (503, "engine_unavailable")}
            assert (status, reply["error"]["code"]) in waiting, reply
            await asyncio.sleep(0.2)
        assert status == 200 and reply["model"] == "bob-lora", reply
