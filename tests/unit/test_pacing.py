"""Pacing: over-share tenants' admissions spaced to the pool's completion rate."""

from __future__ import annotations

import asyncio

import pytest

from fairlane.extproc.admission import EnginePool
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.pacing import LIGHT_TURNS_AHEAD, MIN_SAMPLES, AdmissionPacer
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.runtime import compile_policy
from fairlane.extproc.scheduling import QueuedRequest, make_scheduler
from fairlane.policy_file import parse_policy


def test_no_rate_and_no_pacing_until_enough_completions() -> None:
    pacer = AdmissionPacer(1.0, now=0.0)
    for i in range(MIN_SAMPLES - 1):
        pacer.completed(float(i))
    assert pacer.rate(20.0) is None
    pacer.admitted(20.0)
    assert pacer.delay(20.0) == 0.0


def test_rate_is_counted_over_the_window_not_the_burst() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=30.0)
    for _ in range(100):  # a wave: 100 answers end within the same instant, at 20 s
        pacer.completed(20.0)
    assert pacer.rate(20.0) == pytest.approx(100 / 20.0)  # not 100 per millisecond
    assert pacer.rate(40.0) == pytest.approx(100 / 30.0)
    assert pacer.rate(51.0) is None  # the wave left the window


def test_paced_admissions_are_one_interval_apart() -> None:
    pacer = AdmissionPacer(2.0, now=0.0, window_s=10.0)
    for i in range(40):
        pacer.completed(i * 0.25)  # 4 completions/s
    now = 10.0
    assert pacer.delay(now) == 0.0
    pacer.admitted(now)
    interval = 1 / (2.0 * 4.0)
    assert pacer.delay(now) == pytest.approx(interval, rel=0.05)
    pacer.admitted(now)  # admitted anyway (the caller did not wait): the next waits longer
    assert pacer.delay(now) == pytest.approx(2 * interval, rel=0.05)


def test_a_pending_turn_follows_the_rate_from_slow_start_to_measured() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=10.0, slow_start_rate=0.1)
    pacer.completed(0.0)  # busy since 0 s (an answer ended), so 10 s is not a new start
    pacer.admitted(10.0)
    assert pacer.delay(10.0) == pytest.approx(10.0)  # one per 10 s while in slow start
    for i in range(1, 20):
        pacer.completed(i * 0.5)  # measured: 2 completions/s over the 10 s window
    assert pacer.delay(10.0) == pytest.approx(0.5)  # not the 10 s set in slow start


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def paced_pool(clock: Clock) -> EnginePool:
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": 8}, clock=clock)  # no headroom: pacing alone
    p.set_state("e", EngineState.UP)
    p.pacing.pacer = pacer = AdmissionPacer(1.0, now=0.0, window_s=10.0)
    for i in range(20):
        pacer.completed(clock.now - 10 + i * 0.5)  # 2 completions/s: one admission per 0.5 s
    return p


def req(tenant: str) -> QueuedRequest:
    return QueuedRequest(tenant=tenant, cost=100.0)


async def test_an_over_share_tenant_is_admitted_one_interval_at_a_time() -> None:
    clock = Clock()
    p = paced_pool(clock)
    assert p.try_admit(req("quiet")) == "e"  # under its share: never paced
    held = []
    for _ in range(7):
        r = req("flood")
        if p.try_admit(r) is None:
            break
        held.append(r)
    # Below its share of 4 slots it is not held back, but those admissions (and the
    # quiet tenant's) took the turns, at most LIGHT_TURNS_AHEAD ahead: at its share it
    # waits for them to come round.
    assert len(held) == 4 and p.pacing.pacer is not None
    assert p.pacing.pacer.delay(clock.now) == pytest.approx((1 + LIGHT_TURNS_AHEAD) * 0.5)
    blocked = req("flood")
    assert p.try_admit(blocked) is None  # free slots, but paced
    future = p.enqueue(blocked)
    assert p.try_admit(req("quiet")) == "e"  # the light tenant is not held up
    clock.now += 2.5  # the turns came round (the rate decays a little as the clock moves)
    assert await asyncio.wait_for(future, timeout=4.0) == "e"


@pytest.mark.parametrize(
    ("light_answer_s", "expected_flood"),
    [
        (None, 120),  # light holdings grow all along: the flooder gets 10/s - 4/s
        (1.0, 196),  # they level off at 4 slots: from then on it gets all 10/s
    ],
)
async def test_light_tenants_growth_comes_out_of_the_flooders_pace(
    light_answer_s: float | None, expected_flood: int
) -> None:
    clock = Clock()
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": 1000}, clock=clock)
    p.set_state("e", EngineState.UP)
    p.pacing.pacer = pacer = AdmissionPacer(1.0, now=clock.now - 10, window_s=10.0)
    for i in range(100):
        pacer.completed(clock.now - 10 + i * 0.1)  # 10 completions/s
    p.shares.hold("flood", 1.0, inflight=600)  # over its share of the two tenants (500)
    p.shares.hold("quiet", 1.0, inflight=1)  # (alone, the flooder's share is the pool)
    start, flooded, light = clock.now, 0, []
    for tick in range(1, 2001):  # 20 s in steps of 10 ms
        clock.now = start + tick * 0.01
        if tick % 10 == 0:
            pacer.completed(clock.now)  # the measured rate stays at 10/s
        if light_answer_s is not None and light and light[0][0] + light_answer_s <= clock.now:
            p.release(light.pop(0)[1], "e", 0.0)  # gives its turn back
        if tick % 25 == 0:  # a light request every 0.25 s
            r = req("quiet")
            assert p.try_admit(r) == "e"  # never held back
            light.append((clock.now, r))
        if p.try_admit(req("flood")) is not None:
            flooded += 1
    assert flooded == pytest.approx(expected_flood, rel=0.1)


def test_a_light_request_gives_its_turn_back_when_it_ends() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=10.0)
    for i in range(20):
        pacer.completed(i * 0.5)  # 2 completions/s: a turn every 0.5 s
    pacer.admitted(10.0)
    taken = pacer.admitted(10.0, paced=False)
    assert taken == 1.0 and pacer.delay(10.0) == pytest.approx(1.0)
    pacer.returned(10.0, taken)
    assert pacer.delay(10.0) == pytest.approx(0.5)
    pacer.returned(10.0, 5.0)  # never more than one turn in hand
    pacer.admitted(10.0)
    assert pacer.delay(10.0) == pytest.approx(0.5)


def test_the_rate_is_counted_from_the_first_admission_not_from_an_idle_start() -> None:
    # The pool's pacer exists from the policy load; a vLLM takes a minute to come up.
    pacer = AdmissionPacer(1.0, now=0.0, window_s=30.0, slow_start_rate=0.5)
    pacer.admitted(60.0)
    for i in range(50):
        pacer.completed(63.0 + i * 0.1)  # 10/s from the first answers on
    assert pacer.rate(68.0) == pytest.approx(50 / 8.0)  # not 50 / 30 s
    # Idle for longer than the window, then busy again: counted afresh.
    pacer.admitted(200.0)
    for i in range(20):
        pacer.completed(201.0 + i * 0.1)
    assert pacer.rate(203.0) == pytest.approx(20 / 3.0)


def test_a_burst_of_light_admissions_takes_only_a_few_turns_ahead() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=10.0)
    for i in range(20):
        pacer.completed(i * 0.5)  # 2 completions/s: a turn every 0.5 s
    for _ in range(50):
        pacer.admitted(10.0, paced=False)
    assert pacer.delay(10.0) == pytest.approx((1 + LIGHT_TURNS_AHEAD) * 0.5)


async def test_a_pending_turn_comes_closer_when_the_measured_rate_rises() -> None:
    clock = Clock()
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": 8}, clock=clock)
    p.set_state("e", EngineState.UP)
    # Slow start: one admission per 10 s.
    p.pacing.pacer = AdmissionPacer(1.0, now=clock.now - 10, window_s=10.0, slow_start_rate=0.1)
    assert p.try_admit(req("quiet")) == "e"
    while p.try_admit(req("flood")) is not None:
        pass  # to its share, then one paced admission: the next turn is 10 s away
    queued = req("flood")
    future = p.enqueue(queued)
    # The turns taken ahead (the quiet tenant's and the flooder's under its share) are
    # counted in turns, not seconds of slow start: at the new rate they take ~1 s.
    for i in range(40):  # now measured: 4 completions/s, a turn every 0.25 s
        p.pacing.pacer.completed(clock.now - 10 + i * 0.25)
    assert p.try_admit(req("flood")) is None  # still paced, but the timer is re-armed
    clock.now += 2.5
    assert await asyncio.wait_for(future, timeout=4.0) == "e"  # not 30 s


async def test_a_backlogged_tenant_is_paced_and_not_light_under_its_share() -> None:
    """A wave of the flooder's answers ends at once (they started together): it holds
    fewer slots than its share for a moment, but its backlog makes it no light tenant:
    its refills are paced one at a time and go to the engine behind light requests."""
    clock = Clock()
    p = paced_pool(clock)  # 8 slots, a turn every 0.5 s
    pacer, p.pacing.pacer = p.pacing.pacer, None  # the flood's first admissions, before pacing
    quiet = req("quiet")
    assert p.try_admit(quiet) == "e" and quiet.light
    wave = [req("flood") for _ in range(4)]  # its share of 4
    assert all(p.try_admit(r) == "e" for r in wave)
    p.pacing.pacer = pacer
    backlog = [req("flood") for _ in range(5)]
    waiting = [p.enqueue(r) for r in backlog]
    for r in wave[:3]:
        p.release(r, "e", 100.0)  # 1 slot of its share of 4 left, 5 requests waiting
    await asyncio.sleep(0)
    assert len([f for f in waiting if f.done()]) == 1  # not 3 at once
    clock.now += 0.6
    await asyncio.sleep(0.7)  # the pacing timer: the next turn
    assert len([f for f in waiting if f.done()]) == 2
    assert [r.light for r in backlog[:2]] == [False, False]  # engine priority: after
    assert p.try_admit(req("quiet")) == "e"  # the light tenant is not held up


def test_a_lone_tenant_is_never_paced() -> None:
    clock = Clock()
    p = paced_pool(clock)
    for _ in range(8):
        assert p.try_admit(req("flood")) == "e"  # its share is the whole pool
    assert p.inflight == 8


def test_slow_start_paces_before_any_completion() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=30.0, slow_start_rate=256 / 30.0)
    assert pacer.rate(1.0) == pytest.approx(256 / 30.0)
    pacer.admitted(1.0)
    assert pacer.delay(1.0) == pytest.approx(30.0 / 256)
    for i in range(MIN_SAMPLES):  # the first answers end: 16 in 2 s over the 10 s since
        pacer.completed(8.0 + i / 8)
    assert pacer.rate(10.0) == pytest.approx(256 / 30.0)  # not 1.6/s: slow start is a floor
    for i in range(300):
        pacer.completed(10.0 + i / 20)
    # Measured, over the time since the first admission (1 s).
    assert pacer.rate(25.0) == pytest.approx((MIN_SAMPLES + 300) / 24.0)


def test_the_policy_turns_pacing_on_fair_pools_only_and_a_reload_keeps_its_rate() -> None:
    def policy(pacing: float, scheduler: str = "fair") -> str:
        return f"""
version: 1
engines:
  e: {{kind: sim, models: [m], max_inflight: 60, scheduler: {scheduler}, pacing: {pacing}}}
"""

    g = Gateway(compile_policy(parse_policy(policy(1.1)), 1), Metrics())
    pool = g.pools["e"]
    pacer = pool.pacing.pacer
    assert pacer is not None and pacer.factor == 1.1
    assert pacer.slow_start_rate == pytest.approx(60 / 30.0)
    assert AdmissionPacer.for_pool(1.1, 0.0, slots=1).slow_start_rate == 1.0  # the floor
    g.apply(compile_policy(parse_policy(policy(1.1)), 2))
    assert pool.pacing.pacer is pacer  # unchanged: its measured rate survives the reload
    g.apply(compile_policy(parse_policy(policy(1.5)), 3))
    assert pool.pacing.pacer is not None and pool.pacing.pacer.factor == 1.5
    g.apply(compile_policy(parse_policy(policy(0)), 4))
    assert pool.pacing.pacer is None
    g.apply(compile_policy(parse_policy(policy(1.1, "fifo")), 5))
    assert g.pools["e"].pacing.pacer is None  # arrival order for everyone: nobody is paced


def test_a_pool_below_its_limit_is_refilled_at_the_rate_its_slots_turn_over() -> None:
    """64 slots whose paced requests hold one for 5 s turn over 12.8 times a second when
    full; a third full, the pool completes ~4/s, and paced at 1.1 x that it would grow
    by a tenth per answer's length (minutes to fill). The turnover is the floor."""
    pacer = AdmissionPacer(1.1, now=0.0, window_s=20.0)
    for i in range(MIN_SAMPLES - 1):
        pacer.completed(i * 0.25, held_s=5.0, slots=64)
    pacer.completed(4.0, held_s=0.0, slots=64)  # a light request's: not a sample
    for i in range(MIN_SAMPLES, 80):
        pacer.completed(i * 0.25, held_s=5.0, slots=64)  # 4/s
    assert pacer.rate(20.0) == pytest.approx(4.0)
    assert pacer.interval(20.0) == pytest.approx(5.0 / 64)  # not 1 / 4.4


def test_the_turnover_floor_waits_for_enough_paced_samples_and_never_slows_the_pace() -> None:
    pacer = AdmissionPacer(1.1, now=0.0, window_s=10.0)
    for i in range(100):  # 10/s, every one light (not a sample of a paced holding)
        pacer.completed(i * 0.1, held_s=0.0, slots=64)
    assert pacer.interval(10.0) == pytest.approx(1 / 11.0)
    for _ in range(MIN_SAMPLES):  # paced ones held their slots 60 s: turnover ~1/s
        pacer.completed(10.0, held_s=60.0, slots=64)
    assert pacer.interval(10.0) == pytest.approx(1 / (1.1 * 11.6))  # the measured rate


def test_a_new_busy_period_starts_slow_not_at_the_last_floods_turnover() -> None:
    pacer = AdmissionPacer(1.0, now=0.0, window_s=10.0, slow_start_rate=0.5)
    pacer.admitted(0.0)
    for i in range(40):
        pacer.completed(1.0 + i * 0.2, held_s=2.0, slots=64)  # turnover 32/s
    assert pacer.interval(9.0) == pytest.approx(1 / 32.0)
    pacer.admitted(100.0)  # after a lull longer than the window: slow start again
    assert pacer.interval(100.0) == pytest.approx(1 / 0.5)
    for i in range(MIN_SAMPLES):  # measured afresh once answers end again
        pacer.completed(101.0 + i * 0.1, held_s=1.0, slots=64)
    assert pacer.interval(103.0) == pytest.approx(1 / 64.0)
