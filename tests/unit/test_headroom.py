"""Headroom: the reserved slots a tenant under its share may take while a flooder waits."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from fairlane.extproc.admission import EnginePool
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.scheduling import QueuedRequest, QueueFull, make_scheduler


def pool(kind: str = "fair", capacity: int = 8, headroom: float = 0.25) -> EnginePool:
    scheduler = make_scheduler(kind, max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": capacity}, clock=lambda: 0.0, headroom=headroom)
    p.set_state("e", EngineState.UP)
    return p


def req(tenant: str, weight: float = 1.0) -> QueuedRequest:
    return QueuedRequest(tenant=tenant, cost=100.0, weight=weight)


def fill(p: EnginePool, tenant: str, count: int) -> list[QueuedRequest]:
    """Admit `count` requests of tenant directly; all must fit."""
    held = []
    for _ in range(count):
        r = req(tenant)
        assert p.try_admit(r) is not None
        held.append(r)
    return held


def test_reserved_is_a_fraction_of_capacity_and_never_all_of_it() -> None:
    assert pool(capacity=8, headroom=0.25).reserved == 2
    assert pool(capacity=256, headroom=0.125).reserved == 32
    assert pool(capacity=1, headroom=0.5).reserved == 0
    assert pool(capacity=2, headroom=0.9).reserved == 1
    assert pool(capacity=8, headroom=0.0).reserved == 0


def test_a_lone_tenant_gets_every_slot() -> None:
    p = pool()
    fill(p, "flood", 8)  # its share is the whole pool
    assert p.inflight == 8 and p.headroom_admissions == 2


async def test_light_tenant_takes_reserved_slots_while_the_flooder_waits() -> None:
    p = pool()
    fill(p, "quiet", 1)
    flood = fill(p, "flood", 5)  # up to capacity - reserved = 6
    blocked = req("flood")
    assert p.try_admit(blocked) is None  # 5 of 8 slots > its half share
    waiting = p.enqueue(blocked)
    # The quiet tenant holds 1 < its share of 4: admitted at once, ahead of the queue.
    assert p.try_admit(req("quiet")) == "e"
    assert p.try_admit(req("quiet")) == "e"
    assert p.inflight == 8 and not waiting.done()
    # Releasing a flooder slot leaves 7 in flight: a reserved slot, not the flooder's.
    p.release(flood[0], "e", 100.0)
    assert not waiting.done() and p.inflight == 7
    # Down to capacity - reserved: the flooder's request goes in.
    p.release(flood[1], "e", 100.0)
    assert waiting.done() and waiting.result() == "e" and p.inflight == 7


async def test_queued_light_tenant_is_dispatched_into_the_reserve() -> None:
    p = pool()
    fill(p, "quiet", 1)
    flood = fill(p, "flood", 5)
    late_flood = p.enqueue(req("flood"))
    fill(p, "quiet", 2)  # into the reserve: the pool is full
    late_quiet = p.enqueue(req("quiet"))  # queued, as behind others waiting
    # A flooder slot frees: 7 in flight, so only a reserved slot is free. The head of
    # the fair queue is the quiet tenant (lower counter), holding 3 < its share of 4.
    p.release(flood[0], "e", 100.0)
    assert late_quiet.done() and not late_flood.done()
    assert p.headroom_admissions == 3


async def test_a_newcomer_goes_over_the_limit_while_a_lone_flooder_holds_every_slot() -> None:
    p = pool()  # 8 slots, 2 reserved
    flood = fill(p, "flood", 8)  # alone, its share is the whole pool
    assert all(r.alone and r.light for r in flood)  # unpaced, but last in the engine
    assert p.try_admit(req("flood")) is None  # full, and not under its share
    late_flood = p.enqueue(req("flood"))
    # Under its share (4 of 8 now), the newcomer does not wait for a completion: it goes
    # over the limit, by the reserve at most, and first in the engine's queue.
    first = req("quiet")
    assert p.try_admit(first) == "e" and first.light and not first.alone
    assert p.try_admit(req("quiet")) == "e"
    assert p.inflight == 10 and p.headroom_admissions == 4
    assert p.try_admit(req("quiet")) is None
    late_quiet = p.enqueue(req("quiet"))
    # The flooder's completions go to the quiet tenant first, and the flooder, over its
    # share, is not refilled while the pool is over capacity - reserved (6).
    p.release(flood[0], "e", 100.0)
    assert late_quiet.done() and not late_flood.done() and p.inflight == 10
    for r in flood[1:4]:
        p.release(r, "e", 100.0)
    assert not late_flood.done() and p.inflight == 7  # flooder 4 of its share of 4
    p.release(flood[4], "e", 100.0)  # 3 held: under its share, it may take a slot
    assert late_flood.done() and p.inflight == 7


async def test_fifo_holds_nothing_back() -> None:
    p = pool(kind="fifo", headroom=0.0)
    fill(p, "quiet", 1)
    fill(p, "flood", 7)
    blocked = p.enqueue(req("flood"))
    assert p.try_admit(req("quiet")) is None  # full: the quiet tenant queues too
    assert not blocked.done()


@pytest.mark.parametrize(("weight", "slots"), [(3.0, 9), (1.0, 6)])
def test_weights_set_the_share(weight: float, slots: int) -> None:
    p = pool(capacity=12, headroom=0.5)  # 6 reserved
    assert p.try_admit(req("light")) == "e"
    taken = 0
    while p.try_admit(req("heavy", weight)) == "e":
        taken += 1
    assert taken == slots  # 12 x weight / (weight + 1)
    assert p.try_admit(req("light")) == "e"  # 1 of its share of 3 (or 6)


async def test_holdings_are_forgotten_when_a_tenant_leaves() -> None:
    p = pool()
    held = fill(p, "a", 2) + fill(p, "b", 2)
    queued = req("a")
    future = p.enqueue(queued)
    p.set_state("e", EngineState.DOWN)  # flushes the queue
    with pytest.raises(Exception, match="e"):
        await asyncio.wait_for(future, 1)
    for r in held:
        p.release(r, "e", 100.0)
    assert p.active_tenants == 0


def test_light_names_the_tenants_under_their_share() -> None:
    p = pool()
    fill(p, "quiet", 1)
    fill(p, "flood", 5)
    assert not p.shares.light("flood", 8)  # 5 of 8 slots, its share is 4
    assert p.shares.light("quiet", 8)
    assert p.shares.light("nobody", 8)
    alone = pool()
    held = fill(alone, "flood", 8)
    assert all(r.light for r in held)  # alone, the whole pool is its share


def test_slots_draining_on_a_down_replica_do_not_count_against_the_healthy_one() -> None:
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"a": 4, "b": 4}, clock=lambda: 0.0, headroom=0.25)
    p.set_state("a", EngineState.UP)
    p.set_state("b", EngineState.UP)
    fill(p, "flood", 6)  # 3 on each
    p.set_state("a", EngineState.DOWN)  # its 3 drain; b alone has capacity 4, 1 free
    assert p.try_admit(req("flood")) == "b"


async def test_a_tenant_served_elsewhere_does_not_get_the_reserve() -> None:
    """Shared counters (another gateway) make a tenant rank behind: few slots here are
    not enough to take reserved ones."""
    p = pool()
    fill(p, "spreader", 1)
    fill(p, "pinned", 5)
    p.enqueue(req("pinned"))  # 5 of 8 > its share: waits
    p.scheduler.charge_external("spreader", 10_000.0, 0.0)  # served a lot elsewhere
    assert p.try_admit(req("spreader")) is None  # 1 < its share of 4, but ranks behind
    p.scheduler.charge_external("spreader", -10_000.0, 0.0)
    assert p.try_admit(req("spreader")) is not None


def test_goes_first_follows_classes_and_counters() -> None:
    fair = make_scheduler("fair", max_queue_per_tenant=10, max_queue_total=100)
    assert fair.goes_first(req("a"))  # nothing waits
    fair.admit_direct(req("a"), 0.0)  # a: counter 100
    fair.push(QueuedRequest(tenant="b", cost=100.0), 0.0)  # b lifted to 0, waits
    assert not fair.goes_first(req("a"))  # 100 > b's 0
    assert fair.goes_first(req("new"))  # a newcomer is lifted to the head: a tie
    assert fair.goes_first(QueuedRequest(tenant="a", cost=1.0, priority=-1))  # higher class
    assert not fair.goes_first(QueuedRequest(tenant="new", cost=1.0, priority=1))
    fifo = make_scheduler("fifo", max_queue_per_tenant=10, max_queue_total=100)
    assert fifo.goes_first(req("a"))
    fifo.push(req("b"), 0.0)
    assert not fifo.goes_first(req("a"))


async def test_ids_invented_by_the_thousand_get_one_tenants_share() -> None:
    """Beside a named tenant, 2,000 unnamed ids (one shared tenant, ``unknown``) get
    half the admissions between them, not 2,000 shares, and no more of the reserve."""
    p = pool(capacity=8, headroom=0.25)
    waiting: dict[QueuedRequest, asyncio.Future[str]] = {}
    running: list[QueuedRequest] = []

    def send(request: QueuedRequest) -> None:
        if p.try_admit(request) is not None:
            running.append(request)
        else:
            with contextlib.suppress(QueueFull):  # each queue holds 100
                waiting[request] = p.enqueue(request)

    for i in range(2_000):
        send(QueuedRequest("unknown", 100.0, client=f"rotating-{i}"))
        send(req("alice"))
    assert len(waiting) == 200
    admitted: list[str] = []
    for i in range(150):  # answers end in admission order; each frees one slot
        p.release(running.pop(0), "e", 100.0)
        fresh = QueuedRequest("unknown", 100.0, client=f"new-{i}")  # the rotation goes on
        if p.try_admit(fresh) is not None:
            running.append(fresh)
            admitted.append("unknown")
        for request, future in list(waiting.items()):
            if future.done():
                del waiting[request]
                running.append(request)
                admitted.append(request.tenant)
    assert len(admitted) >= 150
    assert abs(admitted.count("alice") - admitted.count("unknown")) <= 2, admitted


@pytest.mark.parametrize(("linger_s", "reserved_kept"), [(30.0, True), (0.0, False)])
async def test_the_reserve_outlasts_a_short_request_by_the_linger(
    linger_s: float, reserved_kept: bool
) -> None:
    """A chat-like tenant: one short request, a pause, the next. While it lingers, a
    flooder's freed slots down to the reserve go to its queue and the reserve stays
    free for the next short request; without the linger the flooder, alone, fills every
    slot, and the next request goes over the limit into an engine full of its prompts."""
    now = [0.0]
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": 8}, clock=lambda: now[0], headroom=0.25)
    p.set_state("e", EngineState.UP)
    p.shares.linger_s = linger_s
    quiet = fill(p, "quiet", 1)
    flood = fill(p, "flood", 5)  # up to 6 with the quiet tenant active
    waiting = [p.enqueue(req("flood")) for _ in range(10)]
    p.release(quiet[0], "e", 100.0)  # its answer ended
    now[0] = 10.0
    p.release(flood[0], "e", 100.0)  # a flood slot frees: 4 held, 6 allowed
    admitted = sum(f.done() for f in waiting)
    assert admitted == (2 if reserved_kept else 4)  # alone, the flooder fills all 8
    assert p.try_admit(req("quiet")) is not None
    assert p.inflight == (7 if reserved_kept else 9)
