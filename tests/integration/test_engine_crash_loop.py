"""A managed engine that crash-loops is not restarted again, until a policy reload says
its cause may be fixed: then it is tried again, with no restart of the other engines.
Real simulator processes under a real supervisor (no Envoy)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from pathlib import Path

import pytest

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


async def test_a_reload_restarts_a_crash_looping_engine_alone(tmp_path: Path) -> None:
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
    supervisor = EngineSupervisor(policy, run_dir, interval_s=0.1)
    # Another process holds the port: the engine exits at once, five times (0.5 + 1 +
    # 2 + 4 s of backoff), and is left down.
    squatter = socket.create_server(("127.0.0.1", taken))
    await supervisor.start()
    task = asyncio.create_task(supervisor.run())
    try:
        await until(supervisor, "fine", "up", within_s=30)
        looping = supervisor.engines["looping"].process
        assert looping is not None
        deadline = time.monotonic() + 40
        while not looping.crash_looping:
            assert time.monotonic() < deadline, "the engine was not given up on"
            await asyncio.sleep(0.1)
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
    finally:
        squatter.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for run in supervisor.engines.values():
            if run.process is not None:
                await run.process.stop()
