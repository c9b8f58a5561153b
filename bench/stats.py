"""The arithmetic every benchmark shares: percentiles, ratios, goodput, Poisson arrivals."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100), linearly interpolated between order statistics
    (numpy's default). None for no values."""
    if not 0 <= q <= 100:
        raise ValueError("q must be within 0..100")
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1.0) -> dict[str, float | int | None]:
    """count, p50, p99, max and mean of ``values`` times ``scale`` (e.g. 1000 for ms)."""
    if not values:
        return {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}
    p50, p99 = percentile(values, 50), percentile(values, 99)
    return {
        "count": len(values),
        "p50": None if p50 is None else p50 * scale,
        "p99": None if p99 is None else p99 * scale,
        "max": max(values) * scale,
        "mean": sum(values) / len(values) * scale,
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def difference(value: float | None, baseline: float | None) -> float | None:
    if value is None or baseline is None:
        return None
    return value - baseline


def goodput(tokens: int, seconds: float) -> float:
    """Completed output tokens per second over a window of ``seconds``."""
    if seconds <= 0:
        raise ValueError("the window must be longer than 0 s")
    return tokens / seconds


def per_unit(total: float, count: int) -> float | None:
    """``total`` spread over ``count`` items (CPU seconds per request, ...)."""
    return total / count if count else None


def poisson_arrivals(rate_per_s: float, duration_s: float, rng: random.Random) -> list[float]:
    """Send times in [0, duration_s) of a Poisson process of ``rate_per_s`` (seeded rng)."""
    if rate_per_s <= 0:
        return []
    times: list[float] = []
    t = rng.expovariate(rate_per_s)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate_per_s)
    return times


def tenant_rng(seed: int, tenant_index: int) -> random.Random:
    """An independent, reproducible stream per tenant."""
    return random.Random(seed * 1_000_003 + tenant_index)


def lag_ok(lag_p99_ms: float | None, ttft_p50_ms: float | None, fraction: float = 0.1) -> bool:
    """The load generator's p99 event-loop lag is at most ``fraction`` of the TTFT p50 it
    measured; with either missing there is nothing to compare (True)."""
    if lag_p99_ms is None or ttft_p50_ms is None:
        return True
    return lag_p99_ms <= fraction * ttft_p50_ms


def fmt(value: float | None, digits: int = 1) -> str:
    """A table cell: a number with ``digits`` decimals, or '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}"
