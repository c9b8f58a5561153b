"""A fixed-bucket histogram of plain numbers: the code that observes stays free of
prometheus_client; a collector turns it into a Prometheus histogram at scrape time."""

from __future__ import annotations

from bisect import bisect_left


class Histogram:
    """Fixed-bucket histogram; ``counts[i]`` counts values <= ``bounds[i]`` (and above
    the previous bound), the last slot counts values above every bound."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (upper bound, count of values <= bound), ending at +Inf."""
        out: list[tuple[str, int]] = []
        total = 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts, strict=True):
            total += n
            out.append((bound, total))
        return out
