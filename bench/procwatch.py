"""Watch a running stack from outside: each process's memory, open files and threads
from /proc, the worker's in-flight and queue gauges from its /metrics, the machine load.

Used by ``fairlane bench load`` (gauges during each step) and ``fairlane bench soak``
(everything, every few seconds, for the whole run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

GAUGES = ("fairlane_inflight", "fairlane_queue_depth")
_TIMEOUT = aiohttp.ClientTimeout(total=5)
Gauges = Callable[[], Awaitable[dict[str, float] | None]]


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one moment."""

    rss_kib: int  # VmRSS in /proc/PID/status
    fds: int  # entries in /proc/PID/fd
    threads: int  # Threads in /proc/PID/status


def proc_sample(pid: int) -> ProcSample | None:
    """RSS, open file descriptors and threads of ``pid``; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    fields: dict[str, int] = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "Threads"):
            fields[key] = int(value.split()[0])
    if "VmRSS" not in fields:  # a zombie has no memory lines
        return None
    return ProcSample(fields["VmRSS"], fds, fields.get("Threads", 0))


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """Each named metric summed over all its label sets, from Prometheus text."""
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values


async def metric_values(
    session: aiohttp.ClientSession, url: str, names: tuple[str, ...]
) -> dict[str, float] | None:
    """The named metrics (each summed over its label sets) from the Prometheus endpoint
    at ``url``; None when it does not answer."""
    with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
        async with session.get(url, timeout=_TIMEOUT) as resp:
            if resp.status == 200:
                return metric_sums(await resp.text(), names)
    return None


async def worker_gauges(session: aiohttp.ClientSession, url: str) -> dict[str, float] | None:
    """``fairlane_inflight`` and ``fairlane_queue_depth``, summed over engines and tenants,
    from the worker's /metrics at ``url``."""
    return await metric_values(session, url, GAUGES)


class Sampler:
    """Each process of a stack (RSS in MiB, fds, threads, PID) and the worker's gauges,
    every ``interval_s`` seconds while ``run`` runs."""

    def __init__(
        self, pids: Callable[[], dict[str, int]], roles: tuple[str, ...], gauges: Gauges
    ) -> None:
        self.pids = pids  # the stack's processes by role, looked up at every sample
        self.roles = roles
        self.gauges = gauges
        self.t0 = time.monotonic()
        self.samples: list[dict[str, Any]] = []

    def sample(self) -> dict[str, Any]:
        pids = self.pids()
        procs = {}
        for role in self.roles:
            found = proc_sample(pids[role]) if role in pids else None
            if found is not None:
                procs[role] = {
                    "pid": pids[role],
                    "rss_mib": found.rss_kib / 1024,
                    "fds": found.fds,
                    "threads": found.threads,
                }
        return {"t": time.monotonic() - self.t0, "procs": procs}

    async def run(self, interval_s: float) -> None:
        self.t0 = time.monotonic()
        while True:
            sample = self.sample()
            sample["gauges"] = await self.gauges()
            self.samples.append(sample)
            await asyncio.sleep(
                max(0.0, self.t0 + len(self.samples) * interval_s - time.monotonic())
            )


async def settle_gauges(gauges: Gauges, timeout_s: float) -> dict[str, Any]:
    """Wait until in-flight and queue are 0 again; how long it took and the last values."""
    started = time.monotonic()
    values = None
    while time.monotonic() - started < timeout_s:
        values = await gauges()
        if values is not None and not any(values.values()):
            return {"seconds": time.monotonic() - started, "gauges": values, "ok": True}
        await asyncio.sleep(0.25)
    return {"seconds": time.monotonic() - started, "gauges": values, "ok": False}


def loadavg() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg writes them."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"
