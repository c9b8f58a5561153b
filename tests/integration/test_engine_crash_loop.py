"""A managed engine that crash-loops is tried again only every ``crash_loop_retry_s``
(five minutes by default) until it is healthy, or at once on a policy reload, with no
restart of the other engines. Real processes: simulators under a real supervisor (no
Envoy), and a process that always fails under ``ManagedProcess`` alone."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from fairlane.engines.process import ManagedProcess
from fairlane.engines.supervisor import EngineSupervisor
from fairlane.policy import Policy
from fairlane.ports import free_port
from fairlane.rundir import RunDir

pytestmark = pytest.mark.integration


async def until(supervisor: EngineSupervisor, name: str, state: str, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while supervisor.engines[name].state != state:
        assert time.monotonic() < deadline, (name, supervisor.engines[name].state)
        await asyncio.sleep(0.05)


async def test_a_crash_loop_is_retried_at_its_interval_until_healthy(tmp_path: Path) -> None:
    failing = ManagedProcess(
        "failing",
        [sys.executable, "-c", "raise SystemExit(3)"],
        tmp_path / "failing.log",
        max_backoff_s=0.01,
        loop_retry_s=1.0,
    )
    await failing.start()
    deadline = time.monotonic() + 20
    while not failing.crash_looping:
        assert time.monotonic() < deadline, "five quick exits did not make a crash loop"
        await failing.tend()
        await asyncio.sleep(0.02)
    looped_at, restarts = time.monotonic(), failing.restarts
    assert restarts == 4  # started once, restarted four times, five exits
    while failing.restarts < restarts + 2:
        assert time.monotonic() - looped_at < 10, "the crash loop was not retried"
        await failing.tend()
        await asyncio.sleep(0.02)
    # One try a second, not the backoff's hundredths: the second try came after ~2 s.
    assert time.monotonic() - looped_at >= 1.8
    assert failing.crash_looping  # each failed try keeps it in the loop
    failing.healthy()  # what the supervisor says once a try answers its health check
    assert not failing.crash_looping
    await failing.stop()


async def test_a_crash_looping_engine_comes_back_by_itself(tmp_path: Path) -> None:
    async with looping_engine(tmp_path, crash_loop_retry_s=2.0) as (supervisor, squatter, _):
        looping = supervisor.engines["looping"].process
        assert looping is not None
        assert published(supervisor)["looping"]["crash_loop"]  # fairlane_engine_crash_looping
        squatter.close()  # the cause goes away with no operator: the next try succeeds
        await until(supervisor, "looping", "up", within_s=30)
        assert not looping.crash_looping and not published(supervisor)["looping"]["crash_loop"]


async def test_a_reload_restarts_a_crash_looping_engine_alone(tmp_path: Path) -> None:
    async with looping_engine(tmp_path, crash_loop_retry_s=600) as (supervisor, squatter, policy):
        looping = supervisor.engines["looping"].process
        assert looping is not None
        restarts = looping.restarts
        await asyncio.sleep(1.5)
        assert looping.restarts == restarts and supervisor.engines["looping"].state == "down"
        fine = supervisor.engines["fine"].process
        assert fine is not None
        fine_pid = fine.pid

        squatter.close()  # the cause is fixed; the operator reloads the policy
        await supervisor.apply(policy)
        await until(supervisor, "looping", "up", within_s=30)
        assert looping.restarts == restarts + 1
        assert fine.pid == fine_pid and supervisor.engines["fine"].state == "up"


def published(supervisor: EngineSupervisor) -> dict[str, Any]:
    """The engine states the supervisor last wrote for the worker."""
    return dict(json.loads(supervisor.run_dir.engine_states.read_text())["engines"])


def test_a_lazy_engine_is_not_retried_on_a_timer(tmp_path: Path) -> None:
    """Loaded on demand within the GPU memory budget, it could break the budget if a
    timer started it after another engine took its memory; it waits for a reload."""
    engine = {"kind": "sim", "preset": "tiny", "models": ["m"]}
    policy = Policy.model_validate(
        {
            "version": 1,
            "engines": {"eager": engine, "lazy": engine | {"models": ["n"], "lazy": True}},
        }
    )
    supervisor = EngineSupervisor(policy, RunDir(tmp_path), crash_loop_retry_s=60)
    eager, lazy = (supervisor._new_run(name, policy).process for name in ("eager", "lazy"))
    assert eager is not None and eager.loop_retry_s == 60
    assert lazy is not None and lazy.loop_retry_s is None


@contextlib.asynccontextmanager
async def looping_engine(
    tmp_path: Path, crash_loop_retry_s: float
) -> AsyncIterator[tuple[EngineSupervisor, socket.socket, Policy]]:
    """A supervisor running two simulators, ``fine`` up and ``looping`` in a crash loop
    (another socket holds its port: it exits at once, five times over 0.5 + 1 + 2 + 4 s
    of backoff); that socket; their policy."""
    taken = free_port()
    engine = {"kind": "sim", "preset": "tiny", "models": ["m"]}
    policy = Policy.model_validate(
        {
            "version": 1,
            "listener": {"admin_port": free_port()},  # no Envoy: publishes do not wait
            "engines": {"looping": engine | {"port": taken}, "fine": engine | {"models": ["n"]}},
        }
    )
    run_dir = RunDir(tmp_path)
    run_dir.create()
    supervisor = EngineSupervisor(
        policy, run_dir, interval_s=0.1, crash_loop_retry_s=crash_loop_retry_s
    )
    squatter = socket.create_server(("127.0.0.1", taken))
    await supervisor.start()
    task = asyncio.create_task(supervisor.run())
    try:
        await until(supervisor, "fine", "up", within_s=30)
        looping = supervisor.engines["looping"].process
        assert looping is not None
        deadline = time.monotonic() + 40
        while not looping.crash_looping:
            assert time.monotonic() < deadline, "the engine did not crash-loop"
            await asyncio.sleep(0.1)
        assert supervisor.engines["looping"].state == "down"
        yield supervisor, squatter, policy
    finally:
        squatter.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for run in supervisor.engines.values():
            if run.process is not None:
                await run.process.stop()
