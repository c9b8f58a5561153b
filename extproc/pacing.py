"""Spacing out the admissions of tenants over their share.

When many of a flooder's requests finish in the same engine step (answers of one
length, started together), refilling every freed slot at once puts all their prefills
into the next few steps, and a light tenant's request that arrives then shares its
prefill step with them: its time to first token doubles or triples. Admitting the
flooder's requests one at a time, at a little over the rate at which the pool completes
requests, keeps the flooder's long-run throughput (it cannot be served faster than that
rate anyway) while its prefills spread over many steps and its completions drift apart.

The rate is measured: completions over the last ``window_s`` seconds. Until enough have
been seen, ``slow_start_rate`` stands in for it (``for_pool``: capacity / window, as if
the pool turned over once per window), so a flood that begins while light tenants
are still arriving does not take every slot in its first seconds and hold them for one
answer's length; without it nothing is paced until then.
"""

from __future__ import annotations

from collections import deque

MIN_SAMPLES = 16  # completions in the window before the rate is trusted
PACING_WINDOW_S = 30.0


class AdmissionPacer:
    def __init__(
        self,
        factor: float,
        now: float,
        window_s: float = PACING_WINDOW_S,
        slow_start_rate: float | None = None,
        max_samples: int = 8192,
    ) -> None:
        if factor <= 0 or (slow_start_rate is not None and slow_start_rate <= 0):
            raise ValueError("factor and slow_start_rate must be > 0")
        self.factor = factor  # paced admissions per completion (> 1: room to grow)
        self.window_s = window_s
        self.slow_start_rate = slow_start_rate
        self._since = now
        self._completions: deque[float] = deque(maxlen=max_samples)
        # When the latest paced admission was due, not a precomputed next turn: a new rate
        # (slow start to measured) then applies to the turn pending too.
        self._last_at: float | None = None

    @classmethod
    def for_pool(cls, factor: float, now: float, slots: int) -> AdmissionPacer:
        """A pool's pacer: its slow start as if the pool's ``slots`` turned over once
        per window."""
        return cls(factor, now, slow_start_rate=slots / PACING_WINDOW_S)

    def completed(self, now: float) -> None:
        self._completions.append(now)

    def rate(self, now: float) -> float | None:
        """Completions per second over the window; until MIN_SAMPLES were seen, the
        slow-start rate (None: none)."""
        completions = self._completions
        while completions and completions[0] < now - self.window_s:
            completions.popleft()
        if len(completions) < MIN_SAMPLES:
            return self.slow_start_rate
        # Over the whole window (or all the time there is): the first completions of a
        # burst, counted over their own short span, would read as a huge rate.
        span = max(min(self.window_s, now - self._since), 1e-3)
        return len(completions) / span

    def interval(self, now: float) -> float | None:
        """Seconds between paced admissions (None: unpaced for now)."""
        rate = self.rate(now)
        return None if rate is None else 1.0 / (self.factor * rate)

    def delay(self, now: float) -> float:
        """Seconds until the next paced admission may go (0: now)."""
        interval = self.interval(now)
        if interval is None or self._last_at is None:
            return 0.0
        return max(0.0, self._last_at + interval - now)

    def admitted(self, now: float) -> None:
        """A paced admission went: the next one waits one interval from when this one
        was due (an early one pushes the next back)."""
        interval = self.interval(now)
        if interval is None:
            return
        due = now if self._last_at is None else self._last_at + interval
        self._last_at = max(now, due)
