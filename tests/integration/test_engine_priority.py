"""A managed engine runs at its CPU priority: every process of it, and its session.

Real processes (a Python engine stand-in that forks a child after it starts, as vLLM
forks its engine core), read back from /proc.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest

from fairlane.bench.stack import Server
from fairlane.engines import process as process_module
from fairlane.engines.process import ManagedProcess

# Forks a child a moment after it starts (after the supervisor set its priority), writes
# the child's pid, and waits to be stopped.
ENGINE = """
import os, sys, time
time.sleep(0.3)
child = os.fork()
if child == 0:
    time.sleep(60)
    os._exit(0)
open(sys.argv[1], "w").write(str(child))
time.sleep(60)
"""


def nice_of(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of proc(5), counted after the command name


AUTOGROUPS = Path("/proc/self/autogroup").exists()  # CONFIG_SCHED_AUTOGROUP


def autogroup_nice(pid: int) -> int | None:
    """The session's autogroup nice; None on a kernel without autogroups, or for a
    process in the kernel's default autogroup (one whose sessions all descend from init
    without a setsid, as CI runs pytest), whose file reads empty."""
    try:
        text = Path(f"/proc/{pid}/autogroup").read_text()  # "/autogroup-42 nice 7"
    except FileNotFoundError:
        return None
    return int(text.split()[-1]) if text else None


async def wait_for_file(path: Path, timeout_s: float = 10.0) -> str:
    async with asyncio.timeout(timeout_s):
        while not path.exists() or not path.read_text():
            await asyncio.sleep(0.05)
    return path.read_text()


@pytest.mark.parametrize("nice", [0, 7])
async def test_engine_and_its_children_run_at_its_nice(tmp_path: Path, nice: int) -> None:
    child_file = tmp_path / "child.pid"
    process = ManagedProcess(
        "engine stand-in",
        [sys.executable, "-c", ENGINE, str(child_file)],
        tmp_path / "engine.log",
        nice=nice,
    )
    await process.start()
    try:
        assert process.pid is not None
        leader = process.pid
        child = int(await wait_for_file(child_file))
        # nice 0 leaves the priority the engine inherited (the test's own) alone.
        expected = nice or os.getpriority(os.PRIO_PROCESS, 0)
        assert nice_of(leader) == expected
        assert nice_of(child) == expected  # forked after the start: inherited
        assert os.getsid(leader) == leader  # its own session, so its own autogroup
        if AUTOGROUPS:
            assert autogroup_nice(leader) == nice
    finally:
        await process.stop(grace_s=2)
    assert not process.running


async def test_two_engines_started_at_once_both_get_their_autogroup_nice(
    tmp_path: Path,
) -> None:
    if not AUTOGROUPS:
        pytest.skip("this kernel has no autogroups")
    processes = [
        ManagedProcess(
            f"engine {i}",
            [sys.executable, "-c", "import time; time.sleep(60)"],
            tmp_path / f"engine-{i}.log",
            nice=5 + i,
        )
        for i in range(2)
    ]
    await asyncio.gather(*(p.start() for p in processes))
    try:
        for i, process in enumerate(processes):
            assert process.pid is not None
            assert autogroup_nice(process.pid) == 5 + i
    finally:
        await asyncio.gather(*(p.stop(grace_s=2) for p in processes))


async def test_a_benchmark_engine_runs_at_its_nice_too(tmp_path: Path) -> None:
    """The benchmarks start a shared engine outside Fairlane (bench/stack.py's Server) at
    the nice a managed one gets."""
    server = Server("engine", [sys.executable, "-c", "import time; time.sleep(60)"],
                    tmp_path / "engine.log", nice=6)  # fmt: skip
    await server.start()
    try:
        assert nice_of(server.pid) == 6
        if AUTOGROUPS:
            assert autogroup_nice(server.pid) == 6
    finally:
        await server.stop()


async def test_a_refused_autogroup_change_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without CAP_SYS_ADMIN the kernel takes one autogroup change a tenth of a second,
    machine-wide, and answers EAGAIN meanwhile (root, as here, is exempt: a fake kernel
    that refuses twice stands in for it, and nothing real is reniced)."""
    refusals, calls = [BlockingIOError(), BlockingIOError()], []

    def fake_write(pid: int, nice: int) -> None:
        calls.append(("autogroup", pid, nice))
        if refusals:
            raise refusals.pop()

    monkeypatch.setattr(process_module, "_write_autogroup_nice", fake_write)
    monkeypatch.setattr(os, "setpriority", lambda *args: calls.append(("setpriority", *args)))
    await process_module.lower_cpu_priority(4242, 10)
    assert calls == [("setpriority", os.PRIO_PGRP, 4242, 10)] + [("autogroup", 4242, 10)] * 3
