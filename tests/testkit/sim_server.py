"""The simulator as a real process: start it on a port, wait for /health, stop it by
PID, and POST to it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp

from fairlane.ports import free_port

MODEL = "sim-model"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there, simulator!"}]}


def start_sim(port: int, *extra: str) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-P", "-m", "fairlane.engines.sim", "--preset", "tiny"]
    return subprocess.Popen(
        [*cmd, "--port", str(port), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_healthy(proc: subprocess.Popen[str], base: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"simulator exited: {proc.communicate()[1]}"
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise AssertionError("simulator did not become healthy")


def stop_sim(proc: subprocess.Popen[str]) -> tuple[int, str]:
    """SIGTERM (SIGKILL if it hangs) by PID; the exit code and stdout."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    stdout, _ = proc.communicate(timeout=5)
    return proc.returncode, stdout


def simulator() -> Iterator[str]:
    """A healthy simulator's base URL, for a module's ``base_url`` fixture to
    ``yield from``; the simulator is stopped by PID afterwards."""
    port = free_port()
    proc = start_sim(port)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_healthy(proc, base)
        yield base
    finally:
        stop_sim(proc)


async def post(base: str, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(base + path, data=data) as resp:
        return resp.status, await resp.json(content_type=None)
