"""The priority Fairlane gives a request for the engine's own queue: a level (class,
light or not) and, under it, the slots its tenant held for its weight."""

from __future__ import annotations

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN, priority_level
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.outcomes import engine_priority
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.scheduling import QueuedRequest, make_scheduler


def pool(capacity: int = 16) -> EnginePool:
    scheduler = make_scheduler("fair", max_queue_per_tenant=100, max_queue_total=1000)
    p = EnginePool("e", scheduler, {"e": capacity}, clock=lambda: 0.0, headroom=0.125)
    p.set_state("e", EngineState.UP)
    return p


def admit(p: EnginePool, tenant: str, weight: float = 1.0, priority: int = 0) -> int:
    request = QueuedRequest(tenant=tenant, cost=100.0, weight=weight, priority=priority)
    assert p.try_admit(request) == "e"
    return engine_priority(request)


def test_a_burst_under_its_share_does_not_all_go_before_a_quiet_tenant() -> None:
    p = pool()
    assert admit(p, "quiet") == PRIORITY_LEVEL_SPAN  # alone: level 1 (below)
    # The bursting tenant is under its share (8 of 16) for its first 7: light, level 0,
    # each ranked by what it already held.
    burst = [admit(p, "burst") for _ in range(7)]
    assert burst == list(range(7))
    # The quiet tenant's next request, holding 1, goes before the burst's later ones.
    assert admit(p, "quiet") == 1


def test_weight_divides_the_rank() -> None:
    p = pool(capacity=64)
    admit(p, "other")
    assert [admit(p, "heavyweight", weight=4.0) for _ in range(9)] == [0] * 4 + [1] * 4 + [2]
    assert [admit(p, "lightweight", weight=0.5) for _ in range(3)] == [0, 2, 4]


def test_levels_order_class_and_lightness_before_rank() -> None:
    p = pool()
    alone = admit(p, "flood")  # alone in the pool: level 1, so a newcomer goes first
    assert (priority_level(alone), alone % PRIORITY_LEVEL_SPAN) == (1, 0)
    for _ in range(9):
        admit(p, "flood")
    newcomer = admit(p, "quiet")
    assert newcomer == 0
    over_share = admit(p, "flood")  # 10 held of its share of 8: level 1, no rank
    assert over_share == 1 * PRIORITY_LEVEL_SPAN
    batch = admit(p, "batch-job", priority=1)  # the second class: levels 2 and 3
    assert priority_level(batch) == 2 and batch > over_share


def test_the_rank_stays_under_its_level() -> None:
    request = QueuedRequest(tenant="t", cost=1.0, light=True)
    request.rank = 10 * PRIORITY_LEVEL_SPAN
    assert engine_priority(request) == PRIORITY_LEVEL_SPAN - 1
    request.rank = float("inf")  # held for a weight as small as a float goes
    assert engine_priority(request) == PRIORITY_LEVEL_SPAN - 1


def test_a_heavy_tenant_s_requests_keep_their_order_in_the_engine() -> None:
    # Over its share its holdings move with every admission and completion; were they
    # its rank, a request admitted while it held more would wait behind every later one
    # admitted while it held less, for as long as the engine's queue stays full.
    p = pool()
    admit(p, "quiet")
    ranks = {admit(p, "flood") for _ in range(12)}
    assert {priority_level(r) for r in ranks} == {0, 1}
    assert {r for r in ranks if priority_level(r) == 1} == {PRIORITY_LEVEL_SPAN}
