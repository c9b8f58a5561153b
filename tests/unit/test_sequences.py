"""A request generating several sequences (`n`) holds one engine slot per sequence; a
generation wider than an engine is refused."""

from __future__ import annotations

import asyncio

import pytest

from fairlane.extproc.admission import EnginePool
from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.pipeline import Ticket, evaluate
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.extproc.scheduling import QueuedRequest, make_scheduler
from fairlane.policy_file import parse_policy


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
    assert not huge.light  # wider than its share, the whole pool, even alone
    assert p.try_admit(req("b")) is None
    p.release(huge, "e", 0.0)
    assert p.inflight == 0 and p.active_tenants == 0


def test_one_request_wider_than_its_share_is_not_light() -> None:
    """Light requests go first in the engine's queue and may take the reserved slots;
    a single request as wide as its tenant's share (an embeddings batch of thousands,
    which the pool admits and which runs in waves) must not, however little its tenant
    held before it."""
    p = pool(capacity=8)
    p.headroom = 0.25  # 2 slots kept
    held = [req("b") for _ in range(6)]
    assert all(p.try_admit(r) == "e" for r in held)  # only the reserve is left
    wide = req("a", slots=5)  # 4 past its first: a's share beside b is 4
    assert p.try_admit(wide) is None and not wide.light  # the reserve is not for it
    narrow = req("c", slots=3)  # 2 past its first: under 4
    assert p.try_admit(narrow) == "e" and narrow.light


# Two replicas of one model, 8 and 12 sequences at once; the fair scheduler keeps an
# eighth of each for light tenants (1 slot of 8 or 12).
REPLICAS = """version: 1
engines:
  a: {kind: sim, models: [m], max_inflight: 8, scheduler: SCHEDULER}
  b: {kind: sim, models: [m], max_inflight: 12, scheduler: SCHEDULER}
"""


def decide(path: str, scheduler: str = "fair", **fields: object) -> Ticket | Rejection:
    runtime = compile_policy(parse_policy(REPLICAS.replace("SCHEDULER", scheduler)), 1)
    headers = {":path": path, "content-length": "100", "x-tenant-id": "t"}
    return evaluate(request_info(headers, {"model": "m", **fields}), runtime)


@pytest.mark.parametrize(
    ("path", "fields", "refused"),
    [
        ("/v1/chat/completions", {"n": 11.0}, False),  # 12 less the slot kept
        ("/v1/chat/completions", {"n": 12.0}, True),
        ("/v1/chat/completions", {"n": "12"}, True),
        ("/v1/completions", {"prompts": 3.0, "n": 3.0}, False),
        ("/v1/completions", {"prompts": 4.0, "n": 3.0}, True),  # 12 sequences
        ("/v1/completions", {"best_of": 20.0}, True),
        # A pooling batch's items are single passes: admitted, it overfills the pool.
        ("/v1/embeddings", {"prompts": 100.0}, False),
    ],
)
def test_a_generation_wider_than_one_tenant_may_fill_is_refused(
    path: str, fields: dict[str, object], refused: bool
) -> None:
    """Wider than the widest replica, it would run in waves there, each holding every
    other tenant back until its longest answer ends; as wide, it would leave none of
    the slots kept for a light tenant to run beside it."""
    decision = decide(path, **fields)
    if not refused:
        assert isinstance(decision, Ticket), decision
        return
    assert isinstance(decision, Rejection) and decision.reason is Reason.TOO_MANY_SEQUENCES
    assert decision.status == 400
    assert "takes at most 11 of one request here" in decision.message


def test_without_headroom_a_request_may_fill_the_widest_replica() -> None:
    assert isinstance(decide("/v1/chat/completions", "fifo", n=12.0), Ticket)
    assert isinstance(decide("/v1/chat/completions", "fifo", n=13.0), Rejection)
