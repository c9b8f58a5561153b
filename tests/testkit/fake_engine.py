"""A fake OpenAI engine for fault and security tests (``FakeEngine``); run as a script,
this module is the engine process itself."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fairlane.ports import free_port


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
    Started by running this module as a script.
    """

    MODELS = ("fake-stall", "fake-stall-mid", "fake-firehose", "fake-echo", "fake-drop-once")

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-P", str(Path(__file__)), str(self.port)],
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


if __name__ == "__main__":
    _serve_fake_engine(int(sys.argv[1]))
