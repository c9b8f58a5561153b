"""A running `fairlane serve` (Envoy, the worker, engines) for integration tests: its
policy, URLs, health, metrics, logs, and a stop that reports surviving children."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from fairlane.bench.cpu import alive, descendants
from fairlane.ports import free_port

from testkit.http import unverified_context


class Stack:
    """One running `fairlane serve` with its policy."""

    def __init__(self, tmp: Path, policy: dict[str, Any], env: dict[str, str]) -> None:
        listener = policy.setdefault("listener", {})
        listener.setdefault("port", free_port())
        listener.setdefault("admin_port", free_port())
        listener.setdefault("control_port", free_port())
        self.policy = policy
        self.port = listener["port"]
        self.url = f"{'https' if listener.get('tls') else 'http'}://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{listener['admin_port']}"
        self.control = f"http://127.0.0.1:{listener['control_port']}"
        self.run_dir = tmp / "run"
        self.policy_path = tmp / "policy.yaml"
        self.write_policy(policy)
        self.log = open(tmp / "serve.log", "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-m",
                "fairlane.cli",
                "serve",
                "--config",
                str(self.policy_path),
                "--run-dir",
                str(self.run_dir),
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **env},
        )

    def write_policy(self, policy: dict[str, Any]) -> None:
        tmp = self.policy_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(policy))
        tmp.replace(self.policy_path)

    def wait_healthy(
        self, timeout_s: float = 60.0, status: int = 200, context: ssl.SSLContext | None = None
    ) -> None:
        """``context``: how to reach an HTTPS stack (by default trusting any certificate
        and showing none)."""
        import urllib.error
        import urllib.request

        unverified = context or unverified_context()
        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited: {self.logs()}"
            try:
                with urllib.request.urlopen(
                    f"{self.url}/health", timeout=2, context=unverified
                ) as resp:
                    last = resp.status
            except urllib.error.HTTPError as exc:
                last = exc.code
            except (urllib.error.URLError, OSError) as exc:
                last = exc
            if last == status:
                return
            time.sleep(0.1)
        raise AssertionError(f"/health never answered {status} (last: {last})\n{self.logs()}")

    async def post_json(
        self, path: str, body: Any, tenant: str = "alice"
    ) -> tuple[int, dict[str, Any]]:
        """POST ``body`` as ``tenant``: the status and the JSON answer."""
        async with (
            aiohttp.ClientSession() as session,
            session.post(self.url + path, json=body, headers={"x-tenant-id": tenant}) as resp,
        ):
            return resp.status, json.loads(await resp.read())

    async def metrics(self) -> str:
        async with aiohttp.ClientSession() as session, session.get(self.url + "/metrics") as r:
            return await r.text()

    def access_log(
        self, keep: Callable[[dict[str, Any]], bool] | None = None, want: int = 0
    ) -> list[dict[str, Any]]:
        """Entries of DIR/access.log (those ``keep`` accepts), once there are ``want``
        of them or after 15 s: Envoy writes the file every second, asked to now."""
        import urllib.request

        deadline = time.monotonic() + 15
        flush = urllib.request.Request(f"{self.admin}/reopen_logs", method="POST")
        while True:
            urllib.request.urlopen(flush, timeout=5).close()
            path = self.run_dir / "access.log"
            # Only whole lines: Envoy may be writing the last one right now.
            lines = path.read_text().split("\n")[:-1] if path.exists() else []
            entries = [e for e in map(json.loads, filter(None, lines)) if keep is None or keep(e)]
            if len(entries) >= want or time.monotonic() > deadline:
                return entries
            time.sleep(0.1)

    def engine_states(self) -> dict[str, Any]:
        return dict(json.loads((self.run_dir / "engines.json").read_text())["engines"])

    def logs(self) -> str:
        parts = []
        for path in [self.log.name, *sorted((self.run_dir / "logs").glob("*.log"))]:
            with contextlib.suppress(OSError):
                parts.append(f"== {path}\n{Path(path).read_text()[-3000:]}")
        return "\n".join(parts)

    def stop(self) -> set[int]:
        """SIGTERM serve and wait; returns the descendants that outlived it."""
        children = descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log.close()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(p) for p in children):
            time.sleep(0.1)
        survivors = {p for p in children if alive(p)}
        for pid in survivors:
            os.kill(pid, signal.SIGKILL)
        return survivors
