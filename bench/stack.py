"""Start and stop what a benchmark measures: a bare simulator, a whole ``fairlane
serve``, the Redis several of them share (a plain Envoy: ``plain_envoy.py``; their CPU
time: ``cpu.py``).

Every server runs in its own process group (``start_new_session``) on free ports, so a
benchmark never collides with a running ``make serve``; it is stopped by PID (SIGTERM,
wait, then SIGKILL) and every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import aiohttp
import yaml

from fairlane.bench.cpu import children, cmdline
from fairlane.engines.process import lower_cpu_priority
from fairlane.policy_file import parse_policy
from fairlane.ports import free_port

STOP_TIMEOUT_S = 30.0

T = TypeVar("T")


def run_until_stopped(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)``, where SIGTERM or SIGINT cancels ``main`` so that its cleanup
    stops the servers it started: they run in process groups of their own, which a
    signal to the benchmark does not reach (and a background job ignores SIGINT, so
    asyncio's own Ctrl-C handling is not enough). Exits 128 + the signal's number."""
    received: list[int] = []

    async def cancellable() -> T:
        task, loop = asyncio.current_task(), asyncio.get_running_loop()
        assert task is not None

        def stop(signum: int) -> None:
            if not received:  # a second signal must not interrupt the cleanup
                received.append(signum)
                task.cancel()

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signum)
        return await main

    try:
        return asyncio.run(cancellable())
    except asyncio.CancelledError:
        if received:
            print(f"stopped by signal {received[0]}", file=sys.stderr)
            raise SystemExit(128 + received[0]) from None
        raise


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    return [free_port() for _ in range(count)]


def write_policy(directory: Path, document: dict[str, Any], name: str = "policy.yaml") -> Path:
    """Validate a policy document with Fairlane's own schema and write it as YAML."""
    text = yaml.safe_dump(document, sort_keys=False)
    parse_policy(text, name)  # raises PolicyError naming the key
    path = directory / name
    path.write_text(text)
    return path


def bench_policy(
    ports: Sequence[int], tenants: dict[str, Any], engine: dict[str, Any], **sections: Any
) -> dict[str, Any]:
    """A benchmark stack's policy: the listener on ``ports`` (port, admin, control) with
    no drain grace (a benchmark stops at once), ``tenants``, the one engine ``sim``, and
    any other top-level ``sections`` (unknown_tenants, state)."""
    port, admin, control = ports
    listener = {"port": port, "admin_port": admin, "control_port": control, "drain_grace_s": 0}
    return {"version": 1, "listener": listener, "tenants": tenants, "engines": {"sim": engine}} | (
        sections
    )


class Server:
    """One server process in its own session, its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env  # added to this process's environment
        self.nice = nice  # its session's CPU priority, as a managed engine's is set
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was not started"
        return self.process.pid

    async def start(self) -> None:
        with _append(self.log_path) as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, **self.env} if self.env else None,
            )
        if self.nice:
            await lower_cpu_priority(self.process.pid, self.nice)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    async def wait_healthy(self, url: str, timeout_s: float) -> None:
        """Poll ``url`` until it answers 200; raise with the log tail on timeout or exit."""
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.returncode is not None:
                    break
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    # ssl=False: an HTTPS gateway's throwaway certificate
                    timeout = aiohttp.ClientTimeout(total=2)
                    async with session.get(url, timeout=timeout, ssl=False) as r:
                        if r.status == 200:
                            return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not healthy at {url}:\n{self.log_tail()}")

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S, also: list[int] | None = None) -> None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL the group and ``also`` (PIDs of
        children that live in process groups of their own)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
            # Children it left behind (vLLM's EngineCore, say) are still in its group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            for pid in also or []:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)


def _append(path: Path) -> BinaryIO:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.open("ab")


def sim_argv(preset: str, port: int, model: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [
        sys.executable, "-P", "-m", "fairlane.engines.sim",
        "--preset", preset, "--port", str(port), "--model", model, *extra,
    ]  # fmt: skip


async def start_sim(
    preset: str,
    port: int,
    model: str,
    log_dir: Path,
    extra: tuple[str, ...] = (),
    nice: int = 0,
) -> Server:
    """The simulator on ``port`` at ``nice``, once healthy; ``extra``: more of its flags."""
    argv = sim_argv(preset, port, model, extra)
    server = Server(f"sim-{preset}", argv, log_dir / f"sim-{port}.log", nice=nice)
    await server.start()
    await server.wait_healthy(f"http://127.0.0.1:{port}/health", 30)
    return server


def redis_argv(port: int) -> list[str]:
    """A loopback redis-server without persistence (tenant state is soft)."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    return [
        binary, "--port", str(port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no",
    ]  # fmt: skip


async def start_redis(port: int, log_dir: Path, timeout_s: float = 10.0) -> Server:
    """redis-server on ``port``, once it accepts connections; stop it with ``stop()``."""
    server = Server("redis-server", redis_argv(port), log_dir / f"redis-{port}.log")
    await server.start()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.returncode is not None:
            break
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await writer.wait_closed()
            return server
        await asyncio.sleep(0.05)
    await server.stop()
    raise RuntimeError(f"redis-server not listening on {port}:\n{server.log_tail()}")


class FairlaneStack:
    """``fairlane serve`` for a policy file, with a run directory of its own."""

    def __init__(self, policy_path: Path, run_dir: Path, port: int, scheme: str = "http") -> None:
        argv = [
            sys.executable, "-P", "-m", "fairlane.cli", "serve",
            "--config", str(policy_path), "--run-dir", str(run_dir),
        ]  # fmt: skip
        self.server = Server("fairlane serve", argv, run_dir.parent / f"serve-{port}.log")
        self.run_dir = run_dir
        self.port = port
        self.url = f"{scheme}://127.0.0.1:{port}"

    async def start(self, timeout_s: float = 60.0) -> None:
        await self.server.start()
        await self.server.wait_healthy(f"{self.url}/health", timeout_s)

    def pids(self) -> dict[str, int]:
        """This stack's processes by role: serve, envoy, worker, engine (the first sim)."""
        roles: dict[str, int] = {"serve": self.server.pid}
        for pid in children(self.server.pid):
            argv = cmdline(pid)
            text = " ".join(argv)
            if argv and Path(argv[0]).name == "envoy":
                roles["envoy"] = pid
            elif "fairlane.worker" in text:
                roles["worker"] = pid
            elif "fairlane.engines.sim" in text:
                roles.setdefault("engine", pid)
        return roles

    async def stop(self) -> None:
        children = [pid for role, pid in self.pids().items() if role != "serve"]
        await self.server.stop(also=children)
