"""What `fairlane bench noisy-neighbor` reads beside the load: the engine's own queue,
and how long each tenant waited in Fairlane's."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp

from fairlane.bench.procwatch import metric_sums

_TIMEOUT = aiohttp.ClientTimeout(total=2)


class EngineWatcher:
    """The engine's own queue, once a second: is Fairlane keeping it empty?"""

    def __init__(self, session: aiohttp.ClientSession, engine_url: str) -> None:
        self.session = session
        self.url = f"{engine_url}/metrics"
        self.t0 = time.perf_counter()  # reset to the load generator's start
        self.samples: list[tuple[float, float, float]] = []  # (time, waiting, running)

    async def run(self) -> None:
        names = ("vllm:num_requests_waiting", "vllm:num_requests_running")
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.session.get(self.url, timeout=_TIMEOUT) as resp:
                    values = metric_sums(await resp.text(), names)
                    waiting, running = (values[name] for name in names)
                    self.samples.append((time.perf_counter() - self.t0, waiting, running))
            await asyncio.sleep(1.0)

    def summary(self, start: float, end: float) -> dict[str, float]:
        inside = [(w, r) for t, w, r in self.samples if start <= t < end] or [(0.0, 0.0)]
        return {
            "max_waiting": max(w for w, _ in inside),
            "mean_waiting": sum(w for w, _ in inside) / len(inside),
            "mean_running": sum(r for _, r in inside) / len(inside),
            "max_running": max(r for _, r in inside),
        }


async def queue_waits(session: aiohttp.ClientSession, control_ports: list[int]) -> dict[str, float]:
    """Mean time each tenant's admitted requests waited in Fairlane's queues (whole run,
    warm-up included), from the workers' fairlane_queue_wait_seconds histograms, pooled
    over the gateways."""
    texts: list[str] = []
    for port in control_ports:
        url = f"http://127.0.0.1:{port}/metrics"
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with session.get(url, timeout=_TIMEOUT) as resp:
                texts.append(await resp.text())
    return pooled_queue_waits(texts)


def pooled_queue_waits(texts: list[str]) -> dict[str, float]:
    """Per tenant: the sum of its queue-wait histogram sums over the counts, in ms, across
    the /metrics texts of every gateway."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in (line for text in texts for line in text.splitlines()):
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f"fairlane_queue_wait_seconds{suffix}{{"
            if line.startswith(prefix):
                tenant = line.split('tenant="', 1)[1].split('"', 1)[0]
                into[tenant] = into.get(tenant, 0.0) + float(line.rsplit(" ", 1)[1])
    return {t: 1000.0 * sums[t] / n for t, n in counts.items() if n and t in sums}
