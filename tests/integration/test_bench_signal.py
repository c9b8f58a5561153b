"""A benchmark stopped by SIGTERM (``timeout``, a CI job's end) stops the stack it started.

Its servers run in process groups of their own, so the signal does not reach them: before
``run_until_stopped`` the benchmark died at once and left Envoy, the worker and the
simulator running, holding their ports and cores.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from fairlane.bench.cpu import alive, descendants

pytestmark = pytest.mark.integration

STACK_PROCESSES = 4  # fairlane serve, the simulator, the worker, Envoy


@pytest.mark.timeout(120)
async def test_sigterm_stops_the_benchmark_and_every_server_it_started(tmp_path: Path) -> None:
    bench = await asyncio.create_subprocess_exec(
        *(sys.executable, "-P", "-m", "fairlane.cli", "bench", "noisy-neighbor"),
        *("--arms", "solo", "--preset", "tiny", "--duration", "60", "--warmup", "1"),
        *("--output", str(tmp_path / "result.json")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        servers: set[int] = set()
        while len(servers) < STACK_PROCESSES and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            servers = descendants(bench.pid)
        assert len(servers) >= STACK_PROCESSES, f"the stack did not start: {servers}"
        await asyncio.sleep(3)  # the load generator is sending

        bench.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(bench.communicate(), 45)
    finally:
        if bench.returncode is None:
            os.killpg(bench.pid, signal.SIGKILL)

    assert bench.returncode == 128 + signal.SIGTERM
    assert "stopped by signal 15" in stderr.decode()
    assert "Traceback" not in stderr.decode()
    assert not [pid for pid in servers if alive(pid)], "a server outlived its benchmark"
    assert not (tmp_path / "result.json").exists()  # no half-measured result
