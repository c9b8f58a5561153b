"""The supervisor with real simulator processes: a chat request through the stack, and
the PID of the simulator behind an engine."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import aiohttp

CHAT = "/v1/chat/completions"


async def post_chat(
    session: aiohttp.ClientSession, url: str, model: str, tenant: str = "t"
) -> tuple[int, Any, str]:
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    async with session.post(url + CHAT, json=body, headers={"x-tenant-id": tenant}) as resp:
        return resp.status, resp.headers, await resp.text()


def proc_cmdline(pid: int | str) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:  # gone since it was listed
        return []


def engine_pid(port: int) -> int:
    """The simulator listening on port (its cmdline names it)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        cmdline = proc_cmdline(entry)
        if b"fairlane.engines.sim" in cmdline and str(port).encode() in cmdline:
            return int(entry)
    raise AssertionError(f"no simulator on port {port}")
