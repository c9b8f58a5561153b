"""Spacing out the admissions of tenants that are not light (their slots held plus
requests waiting at or over their share: ``Shares.light``).

When many of a flooder's requests finish in the same engine step (answers of one
length, started together), refilling every freed slot at once puts all their prefills
into the next few steps, and a light tenant's request that arrives then shares its
prefill step with them: its time to first token doubles or triples. Admitting the
flooder's requests one at a time, at a little over the rate at which the pool completes
requests, keeps the flooder's long-run throughput (it cannot be served faster than that
rate anyway) while its prefills spread over many steps and its completions drift apart.

The rate is measured: completions over the last ``window_s`` seconds, or since the
pool's current busy period began if that is shorter (a pool that idled, or whose engine
took a minute to come up, must not spread its first seconds of answers over the whole
window). Admissions are paced at ``factor`` x that rate, or at the rate at which the
pool's slots turn over when full of paced requests (Little's law: slots / the mean time
a paced request held one) if that is faster: without that floor a pool below its limit,
after the flood's onset or a lull, grew by only ``factor`` - 1 of its completions per
answer's length, and with ``pacing: 1.1`` a 64-slot pool took minutes to fill while its
flooder got 0.78 of its fifo throughput (``docs/benchmarks.md``); with it, free slots
are refilled within about one answer's length, still one admission at a time. The rate
is never below ``slow_start_rate`` (``for_pool``: capacity / window, as if the pool
turned over once per window, but at least one per second). Before any answer has ended
the slow-start rate stands alone, so a flood that begins while light tenants are still
arriving does not take every slot in its first seconds and hold them for one answer's
length; and just after the first answers end, their count over a window that mostly saw
none does not read as a near-zero rate.

Every admission takes a turn, paced or not: a light tenant is never held back,
but its admission takes a turn from the same rate and gives it back when its request
ends. So what the light tenants' holdings grow by comes out of the flooder's pace, and
what they merely hold steady does not. Otherwise several light tenants ramping up
together (each holding its slots for one answer's length before any comes back) would
find the flooder admitted at the full rate beside them, and the pool full before their
first answers end. A burst of light admissions takes at most ``LIGHT_TURNS_AHEAD`` turns
ahead of time, so it delays the flooder by a few intervals, not for the whole burst.
"""

from __future__ import annotations

from collections import deque

MIN_SAMPLES = 16  # completions in the window before the rate is trusted
PACING_WINDOW_S = 30.0
# A pool's slow start admits at least this many per second: a small pool turning over
# once per window would pace a flooder to one admission every several seconds while it
# waits for MIN_SAMPLES completions it cannot make (and, beside a lingering light tenant,
# for the linger's whole length). The slots still bound what is admitted.
MIN_SLOW_START_RATE = 1.0
LIGHT_TURNS_AHEAD = 2  # turns an under-share admission may take ahead of time
# Weight of the newest completion in the mean time a slot is held (about the last 64).
_HELD_ALPHA = 1.0 / 64


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
        # When counting began: creation, or the first admission after a window without
        # any activity (a pool idle, or not yet serving, says nothing of its rate).
        self._since = now
        self._last_activity: float | None = None
        self._completions: deque[float] = deque(maxlen=max_samples)
        self._mean_held_s = 0.0  # moving mean of the time paced requests held a slot
        self._held_samples = 0
        self._full_rate = 0.0  # completions per second of the pool full: slots / held
        # Turns in hand (at most one; below zero, turns taken ahead), accrued at the rate
        # of the moment rather than fixed as a time of the next turn: a new rate (slow
        # start to measured) then applies to the turn pending too.
        self._turns = 1.0
        self._turns_at = now

    @classmethod
    def for_pool(cls, factor: float, now: float, slots: int) -> AdmissionPacer:
        """A pool's pacer: its slow start as if the pool's ``slots`` turned over once
        per window, and at least MIN_SLOW_START_RATE."""
        rate = max(slots / PACING_WINDOW_S, MIN_SLOW_START_RATE)
        return cls(factor, now, slow_start_rate=rate)

    def completed(self, now: float, held_s: float = 0.0, slots: int = 0) -> None:
        """A request ended; a paced one held its slot for ``held_s`` (0: not counted)
        in a pool of ``slots``."""
        self._completions.append(now)
        self._last_activity = now
        if held_s > 0:
            mean = self._mean_held_s
            self._mean_held_s = held_s if not mean else mean + _HELD_ALPHA * (held_s - mean)
            self._held_samples += 1
            if self._held_samples >= MIN_SAMPLES:
                self._full_rate = slots / self._mean_held_s

    def rate(self, now: float) -> float | None:
        """Completions per second over the window, at least the slow-start rate; until
        MIN_SAMPLES were seen, the slow-start rate alone (None: none)."""
        completions = self._completions
        while completions and completions[0] < now - self.window_s:
            completions.popleft()
        if len(completions) < MIN_SAMPLES:
            return self.slow_start_rate
        # Over the whole window (or all the time there is): the first completions of a
        # burst, counted over their own short span, would read as a huge rate.
        span = max(min(self.window_s, now - self._since), 1e-3)
        return max(len(completions) / span, self.slow_start_rate or 0.0)

    def interval(self, now: float) -> float | None:
        """Seconds between paced admissions (None: unpaced for now): ``factor`` x the
        rate, or, once the rate is measured, the pool's turnover when full if faster."""
        rate = self.rate(now)
        if rate is None:
            return None
        measured = len(self._completions) >= MIN_SAMPLES  # rate() pruned the window
        return 1.0 / max(self.factor * rate, self._full_rate if measured else 0.0)

    def delay(self, now: float) -> float:
        """Seconds until the next paced admission may go (0: now)."""
        interval = self._accrue(now)
        return 0.0 if interval is None else max(0.0, (1.0 - self._turns) * interval)

    def admitted(self, now: float, paced: bool = True) -> float:
        """An admission went and took a turn (one taken early pushes the next back); the
        turns taken. An unpaced one (a light tenant's) takes at most
        LIGHT_TURNS_AHEAD ahead of now, so possibly less than one, or none."""
        if self._last_activity is None or now - self._last_activity > self.window_s:
            # A new busy period: its rate and holding times are measured afresh, so its
            # onset gets the slow start, not the last flood's turnover.
            self._since = now
            self._mean_held_s, self._held_samples, self._full_rate = 0.0, 0, 0.0
        self._last_activity = now
        if self._accrue(now) is None:
            return 0.0
        before = self._turns
        self._turns -= 1.0
        if not paced:
            self._turns = max(self._turns, -float(LIGHT_TURNS_AHEAD))
        return before - self._turns

    def returned(self, now: float, turns: float) -> None:
        """An unpaced admission's request ended: the turns it took come back."""
        if self._accrue(now) is not None:
            self._turns = min(1.0, self._turns + turns)

    def _accrue(self, now: float) -> float | None:
        """Add the turns due since the last call; the interval now (None: unpaced)."""
        interval = self.interval(now)
        elapsed = max(0.0, now - self._turns_at)
        self._turns_at = now
        if interval is None:
            self._turns = 1.0
        else:
            self._turns = min(1.0, self._turns + elapsed / interval)
        return interval
