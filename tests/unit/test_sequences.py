"""A request generating several sequences (`n`) holds one engine slot per sequence."""

from __future__ import annotations

import asyncio

from fairlane.extproc.admission import EnginePool
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.scheduling import QueuedRequest, make_scheduler


def pool(capacity: int = 8) -> EnginePool:
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": capacity}, clock=lambda: 0.0)
    p.set_state("e", EngineState.UP)
    return p


def req(tenant: str, slots: int = 1) -> QueuedRequest:
    return QueuedRequest(tenant=tenant, cost=100.0, slots=slots)


async def test_a_wide_request_holds_a_slot_per_sequence() -> None:
    p = pool()
    wide = req("a", slots=4)
    assert p.try_admit(wide) == "e"
    assert p.inflight == 4
    singles = [req("b") for _ in range(4)]
    assert all(p.try_admit(r) == "e" for r in singles)
    # Its 4 sequences are its half of the pool, as b's 4 requests are b's.
    assert not p.shares.under("a", p.capacity) and not p.shares.under("b", p.capacity)
    late = req("b")
    assert p.try_admit(late) is None
    waiting = p.enqueue(late)
    p.release(wide, "e", 100.0)
    assert waiting.done() and p.inflight == 5
    assert p.shares.under("a", p.capacity)  # holds nothing now


async def test_a_wide_request_overfills_rather_than_waits_for_the_pool_to_drain() -> None:
    p = pool()
    held = [req("a") for _ in range(7)]
    assert all(p.try_admit(r) == "e" for r in held)
    wide = req("b", slots=4)
    assert p.try_admit(wide) == "e"  # one slot was free: no head-of-line blocking
    assert p.inflight == 11
    late = req("c")
    waiting = p.enqueue(late)
    for r in held[:3]:
        p.release(r, "e", 100.0)
    assert not waiting.done() and p.inflight == 8  # still at capacity
    p.release(held[3], "e", 100.0)
    await asyncio.sleep(0)
    assert waiting.done() and p.inflight == 8


def test_slots_are_capped_at_the_capacity_and_given_back_exactly() -> None:
    p = pool(capacity=8)
    huge = req("a", slots=1000)
    assert p.try_admit(huge) == "e"
    assert p.inflight == 8 and huge.slots == 8
    assert huge.light  # alone, its share is the pool
    assert p.try_admit(req("b")) is None
    p.release(huge, "e", 0.0)
    assert p.inflight == 0 and p.active_tenants == 0
