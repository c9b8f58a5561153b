"""The supervisor's health probe against real HTTP engines that answer slowly, answer
errors or are gone: a busy engine keeps its traffic, a failing one loses it quickly."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from fairlane.engines.supervisor import EngineSupervisor
from fairlane.policy import Policy
from fairlane.ports import free_port
from fairlane.rundir import RunDir

pytestmark = pytest.mark.integration

TIMEOUT_S = 0.3  # health.timeout_s
SILENT_LIMIT_S = 2.0  # health.unhealthy_after_s


class Engine:
    """An engine's /health whose answer the test sets: ok, slow (no answer within the
    probe timeout), error (500)."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def health(self, request: web.Request) -> web.Response:
        if self.mode == "slow":
            await asyncio.sleep(TIMEOUT_S * 4)
        return web.Response(status=500 if self.mode == "error" else 200)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/health", self.health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self.runner.addresses[0][1]

    async def stop(self) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def engines() -> AsyncIterator[dict[str, Engine]]:
    found = {"a": Engine(), "b": Engine()}
    for engine in found.values():
        await engine.start()
    yield found
    for engine in found.values():
        with contextlib.suppress(RuntimeError):
            await engine.stop()


@pytest.fixture
async def supervisor(tmp_path: Path, engines: dict[str, Engine]) -> AsyncIterator[EngineSupervisor]:
    health = {"timeout_s": TIMEOUT_S, "unhealthy_after_s": SILENT_LIMIT_S}
    policy = Policy.model_validate(
        {
            "version": 1,
            "listener": {"admin_port": free_port()},  # no Envoy: publishes do not wait
            "engines": {
                name: {
                    "kind": "external",
                    "url": f"http://127.0.0.1:{engine.port}",
                    "models": [f"model-{name}"],
                    "health": health,
                }
                for name, engine in engines.items()
            },
        }
    )
    run_dir = RunDir(tmp_path)
    run_dir.create()
    found = EngineSupervisor(policy, run_dir, interval_s=0.1)
    await found.start()
    task = asyncio.create_task(found.run())
    await until(lambda: state(found, "a") == state(found, "b") == "up", within_s=5)
    yield found
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def state(supervisor: EngineSupervisor, name: str) -> str:
    return supervisor.engines[name].state


async def until(condition: Callable[[], bool], within_s: float) -> float:
    """Seconds until condition holds; fails after within_s."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < within_s, f"not within {within_s}s"
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def test_a_slow_engine_stays_up_until_silent_too_long(
    supervisor: EngineSupervisor, engines: dict[str, Engine]
) -> None:
    engines["a"].mode = "slow"
    await asyncio.sleep(SILENT_LIMIT_S * 0.6)
    assert state(supervisor, "a") == "up"  # probes time out, but not for long enough
    took = await until(lambda: state(supervisor, "a") == "down", within_s=SILENT_LIMIT_S * 2)
    print(f"\nsilent engine out of routing after {SILENT_LIMIT_S * 0.6 + took:.2f}s")
    engines["a"].mode = "ok"
    await until(lambda: state(supervisor, "a") == "up", within_s=2)


async def test_errors_and_refusals_take_an_engine_out_at_once(
    supervisor: EngineSupervisor, engines: dict[str, Engine]
) -> None:
    engines["a"].mode = "error"
    assert await until(lambda: state(supervisor, "a") == "down", within_s=1.0) < 1.0
    await engines["b"].stop()  # nothing listens: connection refused
    assert await until(lambda: state(supervisor, "b") == "down", within_s=1.0) < 1.0


async def test_a_silent_engine_does_not_delay_the_others(
    supervisor: EngineSupervisor, engines: dict[str, Engine]
) -> None:
    engines["a"].mode = "slow"
    await asyncio.sleep(TIMEOUT_S)  # a's probe is out and unanswered
    engines["b"].mode = "error"
    took = await until(lambda: state(supervisor, "b") == "down", within_s=1.0)
    assert took < 1.0
    assert state(supervisor, "a") == "up"
