"""Per-tenant rate limits and daily token quotas, checked before a request may queue.

Pure and synchronous: the caller passes ``now`` as epoch seconds (the daily quota resets
at UTC midnight, so it must be wall-clock time). Admission charges the estimate; the real
usage corrects it when the response ends, so a tenant whose estimates are low still pays
for what it used, and concurrent requests cannot overshoot for long: a correction may
drive a bucket negative, and admissions wait until it has refilled.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

_DAY_S = 86_400.0
# A state with requests in flight is looked at again this long after it was due to expire.
_INFLIGHT_RECHECK_S = 60.0
# Expired states dropped per call: at most one is created per call, so this keeps up.
_SWEEP_PER_CALL = 16


class TokenBucket:
    """Tokens refill at ``rate_per_s`` up to ``burst``.

    An amount larger than the whole burst is taken only from a full bucket and drives it
    negative, so an oversized request is slowed down, never refused forever.
    """

    __slots__ = ("_at", "_level", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: float) -> None:
        if rate_per_s <= 0 or burst <= 0:
            raise ValueError("a token bucket needs a positive rate and burst")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._level = burst
        self._at = -math.inf  # when _level was last brought up to date

    def level(self, now: float) -> float:
        self._refill(now)
        return self._level

    def wait(self, amount: float, now: float) -> float:
        """Seconds until ``amount`` can be taken; 0.0 when it can be now."""
        short = min(amount, self.burst) - self.level(now)
        return max(0.0, short / self.rate_per_s)

    def try_take(self, amount: float, now: float) -> float:
        """Take ``amount`` and return 0.0, or take nothing and return the seconds to wait."""
        wait = self.wait(amount, now)
        if wait == 0.0:
            self._level -= amount
        return wait

    def charge(self, amount: float, now: float) -> None:
        """Take ``amount`` unconditionally (real usage above the estimate): may go negative."""
        self._refill(now)
        self._level -= amount

    def refund(self, amount: float, now: float) -> None:
        """Give back ``amount`` (usage below the estimate), up to the burst."""
        self._refill(now)
        self._level = min(self.burst, self._level + amount)

    def full_at(self) -> float:
        """When the bucket will be full if nothing more is taken."""
        return self._at + (self.burst - self._level) / self.rate_per_s

    def _refill(self, now: float) -> None:
        if now > self._at:  # a clock that steps back refills nothing
            self._level = min(self.burst, self._level + (now - self._at) * self.rate_per_s)
            self._at = now


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """One tenant's limits; None means unlimited.

    ``burst_seconds`` sizes both rate buckets as that many seconds of their rate, so a
    tenant may send up to ``rate * burst_seconds / 60`` at once after idling. Over any
    window of T seconds admissions are then bounded by (T + burst_seconds) seconds' worth
    of the rate, plus the corrections of requests still running.
    """

    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    burst_seconds: float = 10.0
    tokens_per_day: float | None = None

    def __post_init__(self) -> None:
        values = (self.requests_per_minute, self.tokens_per_minute, self.tokens_per_day)
        if self.burst_seconds <= 0 or any(v is not None and v <= 0 for v in values):
            raise ValueError("limits must be positive (or None for unlimited)")

    @property
    def unlimited(self) -> bool:
        return (
            self.requests_per_minute is None
            and self.tokens_per_minute is None
            and self.tokens_per_day is None
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The limiter's answer; ``retry_after_s`` is whole seconds, at least 1, when refused."""

    admitted: bool
    reason: Literal["rate_limited", "quota_exceeded"] | None = None
    retry_after_s: float = 0.0


@dataclass(eq=False, slots=True)
class _State:
    limits: TenantLimits
    requests: TokenBucket | None
    tokens: TokenBucket | None
    day: int = 0
    used_today: float = 0.0
    inflight: int = 0  # admitted and not yet corrected

    def configure(self, limits: TenantLimits, now: float) -> None:
        """Apply (new) limits; buckets keep their level, and any debt, across the change."""
        self.limits = limits
        burst = limits.burst_seconds
        self.requests = _bucket(self.requests, limits.requests_per_minute, burst, now)
        self.tokens = _bucket(self.tokens, limits.tokens_per_minute, burst, now)

    def roll(self, now: float) -> None:
        day = math.floor(now / _DAY_S)
        if day != self.day:
            self.day, self.used_today = day, 0.0

    def quiet_at(self, now: float) -> float:
        """When this state stops carrying information: buckets full, quota day over."""
        at = max((b.full_at() for b in (self.requests, self.tokens) if b), default=-math.inf)
        if self.used_today > 0:
            at = max(at, (self.day + 1) * _DAY_S)
        if self.inflight:  # its correction still needs the buckets
            at = max(at, now + _INFLIGHT_RECHECK_S)
        return at


class RateLimiter:
    """Request and token rate limits and daily token quotas for many tenants.

    Call ``correct`` exactly once for every admitted ``check`` (with the real usage minus
    the estimate, or minus the estimate alone when the request never ran). State lives
    only while it carries information (a bucket not yet full, quota used today, requests
    in flight), so memory is bounded by recently active limited tenants.
    """

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._expiry: list[tuple[float, str]] = []  # exactly one entry per state

    def check(self, tenant: str, limits: TenantLimits, est_tokens: float, now: float) -> Verdict:
        """Admit and charge (1 request, ``est_tokens`` tokens) or refuse, charging nothing.

        The quota is checked first: a request that would take today's usage past
        ``tokens_per_day`` is refused until UTC midnight (one estimated above the whole
        quota never fits).
        """
        self._sweep(now)
        if limits.unlimited:
            return Verdict(admitted=True)
        state = self._state(tenant, limits, now)
        quota = limits.tokens_per_day
        if quota is not None and state.used_today + est_tokens > quota:
            until_midnight = (state.day + 1) * _DAY_S - now
            return Verdict(False, "quota_exceeded", _retry_after(until_midnight))
        charges = [(b, a) for b, a in ((state.requests, 1.0), (state.tokens, est_tokens)) if b]
        wait = max((bucket.wait(amount, now) for bucket, amount in charges), default=0.0)
        if wait > 0.0:
            return Verdict(False, "rate_limited", _retry_after(wait))
        for bucket, amount in charges:
            bucket.charge(amount, now)
        if quota is not None:
            state.used_today += est_tokens
        state.inflight += 1
        return Verdict(admitted=True)

    def correct(self, tenant: str, delta_tokens: float, now: float) -> None:
        """Apply real usage minus the estimate to the token bucket and the daily quota.

        A correction that arrives after UTC midnight counts against the new day.
        """
        self._sweep(now)
        state = self._states.get(tenant)
        if state is None:
            return  # admitted while it had no limits: nothing was charged
        state.inflight = max(0, state.inflight - 1)
        state.roll(now)
        if state.tokens is not None:
            if delta_tokens > 0:
                state.tokens.charge(delta_tokens, now)
            else:
                state.tokens.refund(-delta_tokens, now)
        if state.limits.tokens_per_day is not None:
            state.used_today = max(0.0, state.used_today + delta_tokens)

    def tracked_tenants(self) -> int:
        """Tenants whose limit state is held."""
        return len(self._states)

    def _state(self, tenant: str, limits: TenantLimits, now: float) -> _State:
        state = self._states.get(tenant)
        if state is None:
            state = self._states[tenant] = _State(limits, None, None)
            state.configure(limits, now)
            heapq.heappush(self._expiry, (now, tenant))
        elif state.limits != limits:  # the policy changed
            state.configure(limits, now)
        state.roll(now)
        return state

    def _sweep(self, now: float) -> None:
        for _ in range(_SWEEP_PER_CALL):
            if not self._expiry or self._expiry[0][0] > now:
                return
            _, tenant = heapq.heappop(self._expiry)
            quiet_at = self._states[tenant].quiet_at(now)
            if quiet_at <= now:
                del self._states[tenant]
            else:
                heapq.heappush(self._expiry, (quiet_at, tenant))


def _bucket(
    old: TokenBucket | None, per_minute: float | None, burst_s: float, now: float
) -> TokenBucket | None:
    """A bucket for the configured rate that carries the old bucket's level over.

    A larger burst adds its extra room at once (raising a limit helps now); a smaller
    one clamps. Debt is kept, so a reload never forgives usage or grants a fresh burst.
    """
    if per_minute is None:
        return None
    bucket = TokenBucket(per_minute / 60.0, per_minute / 60.0 * burst_s)
    if old is not None:
        level = min(bucket.burst, old.level(now) + max(0.0, bucket.burst - old.burst))
        bucket.charge(bucket.burst - level, now)
    return bucket


def _retry_after(seconds: float) -> float:
    """Whole seconds for the Retry-After header, at least 1."""
    return float(max(1, math.ceil(seconds - 1e-9)))
