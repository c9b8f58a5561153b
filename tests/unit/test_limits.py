"""Token buckets, per-tenant rate limits and daily quotas."""

from __future__ import annotations

import heapq
import random

import pytest

from fairlane.extproc.limits import RateLimiter, TenantLimits, TokenBucket, Verdict

DAY = 86_400.0
NOON = 19_000 * DAY + 12 * 3600.0  # an epoch time at 12:00 UTC


def test_bucket_starts_full_and_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=100)
    assert bucket.try_take(100, 0) == 0.0
    assert bucket.try_take(1, 0) == pytest.approx(0.1)  # refused: nothing taken
    assert bucket.level(0) == 0
    assert bucket.try_take(25, 2) == pytest.approx(0.5)
    assert bucket.try_take(25, 2.5) == 0.0
    assert bucket.level(1_000) == 100  # never above the burst
    assert bucket.full_at() == 1_000


def test_bucket_ignores_a_clock_stepping_back() -> None:
    bucket = TokenBucket(rate_per_s=1, burst=10)
    bucket.charge(10, 100)
    assert bucket.level(50) == 0
    assert bucket.level(105) == 5


def test_oversized_amount_needs_a_full_bucket_and_leaves_debt() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=100)
    bucket.charge(50, 0)
    assert bucket.try_take(300, 0) == pytest.approx(5.0)  # waits for a full bucket only
    assert bucket.try_take(300, 5) == 0.0
    assert bucket.level(5) == -200
    assert bucket.try_take(1, 5) == pytest.approx(20.1)


def test_correction_goes_negative_then_recovers() -> None:
    bucket = TokenBucket(rate_per_s=10, burst=100)
    assert bucket.try_take(40, 0) == 0.0
    bucket.charge(150, 1)  # real usage far above the estimate: never forgiven
    assert bucket.level(1) == pytest.approx(-80)
    assert bucket.try_take(10, 1) == pytest.approx(9.0)
    assert bucket.try_take(10, 10) == 0.0
    bucket.refund(500, 10)
    assert bucket.level(10) == 100  # a refund never lifts it past the burst


def test_bucket_needs_a_positive_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate_per_s=0, burst=1)


def test_limits_validate_and_know_when_unlimited() -> None:
    assert TenantLimits().unlimited
    assert not TenantLimits(tokens_per_day=1).unlimited
    with pytest.raises(ValueError):
        TenantLimits(requests_per_minute=0)
    with pytest.raises(ValueError):
        TenantLimits(burst_seconds=-1)


def test_unlimited_tenants_cost_nothing() -> None:
    limiter = RateLimiter()
    for i in range(1_000):
        assert limiter.check(f"t{i}", TenantLimits(), 10**9, NOON) == Verdict(True)
        limiter.correct(f"t{i}", 5, NOON)
    assert limiter.tracked_tenants() == 0


def test_requests_per_minute_and_retry_after() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(requests_per_minute=60, burst_seconds=3)  # 1/s, 3 at once
    for _ in range(3):
        assert limiter.check("a", limits, 0, NOON).admitted
    refused = limiter.check("a", limits, 0, NOON)
    assert refused == Verdict(False, "rate_limited", 1.0)
    assert limiter.check("a", limits, 0, NOON + 0.2).retry_after_s == 1.0  # 0.8 s: at least 1
    assert limiter.check("a", limits, 0, NOON + 1).admitted
    assert limiter.check("b", limits, 0, NOON).admitted  # tenants are independent


def test_retry_after_is_computed_from_the_refill() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(tokens_per_minute=600, burst_seconds=10)  # 10 tokens/s, 100 burst
    assert limiter.check("a", limits, 100, NOON).admitted
    verdict = limiter.check("a", limits, 45, NOON + 0.5)
    assert verdict == Verdict(False, "rate_limited", 4.0)  # 40 short at 10/s: ceil(4.0)
    assert limiter.check("a", limits, 46, NOON + 0.5).retry_after_s == 5.0  # 4.1 s
    assert not limiter.check("a", limits, 45, NOON + 4.4).admitted
    assert limiter.check("a", limits, 45, NOON + 5.0).admitted


def test_dual_charge_is_atomic() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(requests_per_minute=60, tokens_per_minute=600, burst_seconds=2)
    # Buckets: 2 requests, 20 tokens.
    assert limiter.check("a", limits, 15, NOON).admitted
    assert not limiter.check("a", limits, 15, NOON).admitted  # tokens short
    assert limiter.check("a", limits, 5, NOON).admitted  # so the request was not charged
    assert not limiter.check("a", limits, 0, NOON).admitted  # now requests are short
    # 1 s later: 1 request back, 10 tokens back. A refused request takes no tokens either.
    assert not limiter.check("a", limits, 11, NOON + 1).admitted
    assert limiter.check("a", limits, 10, NOON + 1).admitted


def test_correction_charges_real_usage_and_refunds_overestimates() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(tokens_per_minute=600, burst_seconds=6)  # 10/s, 60 burst
    assert limiter.check("a", limits, 10, NOON).admitted
    limiter.correct("a", 100, NOON)  # used 110: the bucket is at -50
    assert limiter.check("a", limits, 10, NOON) == Verdict(False, "rate_limited", 6.0)
    assert limiter.check("a", limits, 10, NOON + 6).admitted
    limiter.correct("a", -10, NOON + 6)  # used nothing after all
    assert limiter.check("a", limits, 10, NOON + 6).admitted


def test_daily_quota_resets_at_utc_midnight() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(tokens_per_day=1_000)
    late = 19_000 * DAY + 23 * 3600.0  # 23:00 UTC
    assert limiter.check("a", limits, 800, late).admitted
    refused = limiter.check("a", limits, 300, late + 0.5)
    assert refused == Verdict(False, "quota_exceeded", 3600.0)  # ceil(3599.5)
    limiter.correct("a", -700, late + 1)  # it used 100
    assert limiter.check("a", limits, 900, late + 2).admitted
    assert not limiter.check("a", limits, 1, late + 3).admitted
    assert limiter.check("a", limits, 1_000, 19_001 * DAY).admitted  # a new UTC day
    assert not limiter.check("a", limits, 1, 19_001 * DAY + 1).admitted


def test_quota_refusal_beats_rate_refusal() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(requests_per_minute=1, tokens_per_day=10)
    assert limiter.check("a", limits, 10, NOON).admitted
    assert limiter.check("a", limits, 1, NOON).reason == "quota_exceeded"


def test_policy_change_keeps_the_debt() -> None:
    limiter = RateLimiter()
    old = TenantLimits(tokens_per_minute=600, burst_seconds=10)
    assert limiter.check("a", old, 100, NOON).admitted
    limiter.correct("a", 100, NOON)  # -100
    new = TenantLimits(tokens_per_minute=1_200, burst_seconds=10)  # 20/s, 200 burst
    # The level was -100; the extra 100 of burst is added at once: 0, so 1 token waits.
    assert limiter.check("a", new, 1, NOON) == Verdict(False, "rate_limited", 1.0)
    assert limiter.check("a", new, 1, NOON + 0.06).admitted
    smaller = TenantLimits(tokens_per_minute=60, burst_seconds=10)  # 1/s, 10 burst
    later = NOON + 3600  # refilled long ago: clamped to the new, smaller burst
    assert limiter.check("a", smaller, 10, later).admitted
    assert not limiter.check("a", smaller, 1, later).admitted


def test_idle_state_is_dropped() -> None:
    limiter = RateLimiter()
    rate = TenantLimits(tokens_per_minute=600, burst_seconds=10)
    quota = TenantLimits(tokens_per_day=10_000)
    for i in range(2_000):
        assert limiter.check(f"r{i}", rate, 50, NOON).admitted
        limiter.correct(f"r{i}", 0, NOON)
    assert limiter.check("q", quota, 50, NOON).admitted
    limiter.correct("q", 0, NOON)
    assert limiter.tracked_tenants() == 2_001
    for step in range(200):  # ordinary traffic once the buckets have refilled
        limiter.check("live", TenantLimits(), 1, NOON + 10 + step)
    assert limiter.tracked_tenants() == 1  # only the quota, which holds until midnight
    tomorrow = 19_001 * DAY + 1
    limiter.check("live", TenantLimits(), 1, tomorrow)
    assert limiter.tracked_tenants() == 0


def test_state_with_requests_in_flight_is_kept_for_the_correction() -> None:
    limiter = RateLimiter()
    limits = TenantLimits(tokens_per_minute=600, burst_seconds=10)
    assert limiter.check("a", limits, 10, NOON).admitted
    for step in range(100):  # the bucket is full again long before the response ends
        limiter.check("other", TenantLimits(), 1, NOON + 10 * step)
    limiter.correct("a", 290, NOON + 1_000)  # used 300 in all: -190
    assert limiter.check("a", limits, 10, NOON + 1_000) == Verdict(False, "rate_limited", 20.0)


def test_concurrent_admissions_cannot_overshoot_tokens_per_minute() -> None:
    """N clients hammer one tenant, underestimating by up to 3x.

    A correction may leave the bucket negative, but only by what requests in flight when
    it went negative add, so over any window of T seconds the tokens charged (estimates,
    then corrections) are at most burst + rate * T + N * max_overrun. Over the long run
    that is tokens_per_minute.
    """
    rng = random.Random(11)
    tpm, burst_s, clients, horizon = 6_000.0, 10.0, 20, 3_600.0
    limiter = RateLimiter()
    limits = TenantLimits(tokens_per_minute=tpm, burst_seconds=burst_s)
    max_overrun = 300 * 2.0
    charges: list[tuple[float, float]] = []
    events = [(rng.uniform(0, 1), c, "check", 0.0, 0.0) for c in range(clients)]
    heapq.heapify(events)
    while events:
        now, client, kind, est, actual = heapq.heappop(events)
        if kind == "end":
            limiter.correct("t", actual - est, now)
            charges.append((now, actual - est))
            kind, est = "check", 0.0
        if now > horizon:
            continue
        est = rng.uniform(50, 300)
        verdict = limiter.check("t", limits, est, now)
        if verdict.admitted:
            charges.append((now, est))
            actual = est * rng.uniform(0.5, 3.0)
            heapq.heappush(events, (now + rng.uniform(1, 20), client, "end", est, actual))
        else:
            assert verdict.retry_after_s >= 1 and verdict.retry_after_s == int(
                verdict.retry_after_s
            )
            heapq.heappush(events, (now + verdict.retry_after_s, client, "check", 0.0, 0.0))

    rate = tpm / 60
    slack = rate * burst_s + clients * max_overrun
    total = sum(amount for _, amount in charges)  # every request has been corrected
    assert total <= rate * charges[-1][0] + slack
    assert total >= 0.9 * rate * horizon  # the limiter was saturated, not idle
    window, start, in_window = 60.0, 0, 0.0
    for end in range(len(charges)):  # every window of 60 s ending at a charge
        in_window += charges[end][1]
        while charges[end][0] - charges[start][0] > window:
            in_window -= charges[start][1]
            start += 1
        assert in_window <= rate * window + slack
