"""What `fairlane bench noisy-neighbor` reads beside the load: the engine's own queue,
and how long each tenant waited in Fairlane's."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import aiohttp

from fairlane.bench.procwatch import metric_sums

_TIMEOUT = aiohttp.ClientTimeout(total=2)


# The simulator's counts of Fairlane's announcements (fairlane.engines.announcements), by
# priority level: counter -> key. A vLLM logs them instead (docs/troubleshooting.md).
_ANNOUNCED = {
    "fairlane_sim_announced_requests_total": "announced",
    "fairlane_sim_announced_requests_met_total": "met",
    "fairlane_sim_announced_requests_in_time_total": "in_time",
    "fairlane_sim_announced_requests_expired_total": "expired",
}
Counts = dict[str, dict[str, float]]  # level -> key -> count


class EngineWatcher:
    """The engine's own queue, once a second: is Fairlane keeping it empty? And, on the
    simulator, what it heard of Fairlane's announcements."""

    def __init__(self, session: aiohttp.ClientSession, engine_url: str) -> None:
        self.session = session
        self.url = f"{engine_url}/metrics"
        self.t0 = time.perf_counter()  # reset to the load generator's start
        # (time, waiting, running, announcements)
        self.samples: list[tuple[float, float, float, Counts]] = []

    async def run(self) -> None:
        names = ("vllm:num_requests_waiting", "vllm:num_requests_running")
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.session.get(self.url, timeout=_TIMEOUT) as resp:
                    text = await resp.text()
                    waiting, running = metric_sums(text, names).values()
                    self.samples.append(
                        (time.perf_counter() - self.t0, waiting, running, announcement_counts(text))
                    )
            await asyncio.sleep(1.0)

    def summary(self, start: float, end: float) -> dict[str, Any]:
        inside = [s for s in self.samples if start <= s[0] < end]
        waiting = [s[1] for s in inside] or [0.0]
        running = [s[2] for s in inside] or [0.0]
        summary: dict[str, Any] = {
            "max_waiting": max(waiting),
            "mean_waiting": sum(waiting) / len(waiting),
            "mean_running": sum(running) / len(running),
            "max_running": max(running),
        }
        if inside and inside[-1][3]:
            # Counted over the measured window, as the latencies are.
            first, last = inside[0][3], inside[-1][3]
            summary["announcements"] = {
                level: {k: n - first.get(level, {}).get(k, 0.0) for k, n in counts.items()}
                for level, counts in last.items()
            }
        return summary


def announcement_counts(text: str) -> Counts:
    """The simulator's announcement counters by level, from its /metrics text."""
    counts: Counts = {}
    for line in text.splitlines():
        key = _ANNOUNCED.get(line.split("{", 1)[0])
        if key is not None and 'level="' in line:
            counts.setdefault(_label(line, "level"), {})[key] = _value(line)
    return counts


def announcements_heard(arms: dict[str, dict[str, Any]]) -> list[str]:
    """For the report: what each arm's simulator heard of Fairlane's announcements in
    the measured window, by priority level (the light tenants' is 0)."""
    lines = []
    for arm, s in arms.items():
        for level, c in sorted(s["engine"].get("announcements", {}).items()):
            lines.append(
                f"{arm}: the engine heard {c['announced']:.0f} announcements of level {level}: "
                f"{c['met']:.0f} met, {c['in_time']:.0f} in time for a step planned before "
                f"their request, {c['expired']:.0f} expired"
            )
    return ["\n".join(lines)] if lines else []


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
                tenant = _label(line, "tenant")
                into[tenant] = into.get(tenant, 0.0) + _value(line)
    return {t: 1000.0 * sums[t] / n for t, n in counts.items() if n and t in sums}


def _label(line: str, name: str) -> str:
    """A label's value in one line of Prometheus text (values here never hold quotes)."""
    return line.split(f'{name}="', 1)[1].split('"', 1)[0]


def _value(line: str) -> float:
    return float(line.rsplit(" ", 1)[1])
