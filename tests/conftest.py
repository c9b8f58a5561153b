"""Shared fixtures: a real `fairlane serve` (Envoy + worker + engines) per test module.

Every stack uses free ports and its own run directory, runs in its own process group,
and is stopped by PID; teardown asserts no child process outlived it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from fairlane.bench.cpu import alive, descendants
from fairlane.ports import free_port

# Test modules import their shared helpers as `testkit.*` (pytest's importlib mode puts
# no test directory on the path by itself).
sys.path.insert(0, str(Path(__file__).parent))


class Stack:
    """One running `fairlane serve` with its policy."""

    def __init__(self, tmp: Path, policy: dict[str, Any], env: dict[str, str]) -> None:
        listener = policy.setdefault("listener", {})
        listener.setdefault("port", free_port())
        listener.setdefault("admin_port", free_port())
        listener.setdefault("control_port", free_port())
        self.policy = policy
        self.port = listener["port"]
        self.url = f"http://127.0.0.1:{self.port}"
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

    def wait_healthy(self, timeout_s: float = 60.0, status: int = 200) -> None:
        import urllib.error
        import urllib.request

        deadline = time.monotonic() + timeout_s
        last: object = None
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"serve exited: {self.logs()}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
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

    async def metric(self, sample: str) -> float:
        """The value of one sample (`name{labels}`) on /metrics; 0 before it exists."""
        lines = [
            line for line in (await self.metrics()).splitlines() if line.startswith(sample + " ")
        ]
        return float(lines[0].rsplit(" ", 1)[1]) if lines else 0.0

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


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    stacks: list[Stack] = []

    def start(
        policy: dict[str, Any], healthy: bool = True, env: dict[str, str] | None = None
    ) -> Stack:
        stack = Stack(tmp_path_factory.mktemp("stack"), policy, env or {})
        stacks.append(stack)
        if healthy:
            stack.wait_healthy()
        return stack

    yield start
    for stack in stacks:
        assert not stack.stop(), "child processes outlived `fairlane serve`"


# -- a fake OpenAI engine for fault and security tests ------------------------------------


class FakeEngine:
    """A fake engine (not an LLM, not the simulator): one aiohttp process whose behaviour
    is chosen by the request's ``model``, registered in a policy as an ``external`` engine.

    - ``fake-stall``: reads the request and never answers (no headers).
    - ``fake-stall-mid``: sends 200 SSE headers and one chunk, then stalls.
    - ``fake-firehose``: streams SSE as fast as the reader takes it, ``max_tokens`` KiB.
    - ``fake-echo``: answers a small chat completion at once.
    - ``fake-drop-once``: closes the connection without an answer the first time it
      sees a request's ``user``, answers as ``fake-echo`` after that (after the body's
      ``delay_s``, if any).

    ``stats()`` reports what it received (the last requests' headers) and wrote
    (``GET /fake/stats``). It runs in its own process group and is stopped by PID.
    Started by running this file as a script.
    """

    MODELS = ("fake-stall", "fake-stall-mid", "fake-firehose", "fake-echo", "fake-drop-once")

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__)), "fake-engine", str(self.port)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.process.poll() is None, Path(log_path).read_text()
            with contextlib.suppress(OSError):
                self.stats()
                return
            time.sleep(0.1)
        raise AssertionError(f"the fake engine never answered on {self.url}")

    def engine_config(self) -> dict[str, Any]:
        return {"kind": "external", "url": self.url, "models": list(self.MODELS)}

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/fake/stats", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="module")
def fake_engine_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start FakeEngine processes for a module; all are killed by PID at its end."""
    engines: list[FakeEngine] = []

    def start() -> FakeEngine:
        engine = FakeEngine(tmp_path_factory.mktemp("fake") / "fake-engine.log")
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.stop()


def _serve_fake_engine(port: int) -> None:
    import asyncio

    from aiohttp import web

    stats: dict[str, Any] = {"requests": 0, "firehose_bytes": 0, "headers": [], "dropped": []}
    chunk = b"data: " + json.dumps({"choices": [{"delta": {"content": "x" * 1000}}]}).encode()
    chunk = (chunk + b"\n\n") * 64  # ~64 KiB per write

    async def generate(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stats["requests"] += 1
        headers = {k.lower(): v for k, v in request.headers.items()}
        stats["headers"].append(headers)
        del stats["headers"][:-20]
        model = body.get("model")
        if model == "fake-stall":
            await asyncio.sleep(3600)
        if model == "fake-drop-once" and body.get("user") not in stats["dropped"]:
            stats["dropped"].append(body.get("user"))
            assert request.transport is not None
            request.transport.close()  # as an engine closing a keep-alive connection
            await asyncio.sleep(3600)
        if model in ("fake-echo", "fake-drop-once"):
            await asyncio.sleep(float(body.get("delay_s", 0)))
            reply = {
                "id": "fake",
                "object": "chat.completion",
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }
            return web.json_response(reply)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        if model == "fake-stall-mid":
            await resp.write(b'data: {"choices": [{"delta": {"content": "x"}}]}\n\n')
            await asyncio.sleep(3600)
        limit, written = int(body.get("max_tokens", 1)) * 1024, 0
        while written < limit:
            await resp.write(chunk)  # waits while the reader (Envoy) pushes back
            written += len(chunk)
            stats["firehose_bytes"] += len(chunk)
        await resp.write(b"data: [DONE]\n\n")
        return resp

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    async def health(request: web.Request) -> web.Response:
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", generate)
    app.router.add_post("/v1/completions", generate)
    app.router.add_get("/health", health)
    app.router.add_get("/fake/stats", get_stats)
    web.run_app(app, host="127.0.0.1", port=port, print=None, handler_cancellation=True)


if __name__ == "__main__" and sys.argv[1:2] == ["fake-engine"]:
    _serve_fake_engine(int(sys.argv[2]))


REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


class RedisServer:
    """One redis-server without persistence, on a fixed port so it can come back."""

    def __init__(self, log_dir: Path) -> None:
        if not os.path.exists(REDIS):
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = log_dir / f"redis-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        assert self.process is None
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    *(REDIS, "--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log_path.read_text()
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.01)
        raise AssertionError(f"redis-server never listened on {self.port}")

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)  # in case a test paused it
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def pause(self) -> None:
        """SIGSTOP: connections stay open and nothing answers (a hung Redis)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()
