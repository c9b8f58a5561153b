"""``charge_external``: service a tenant got on another gateway moves its counter here."""

from __future__ import annotations

from fairlane.extproc.scheduling import FairScheduler, FifoScheduler, QueuedRequest, Scheduler


def fair() -> FairScheduler:
    return FairScheduler(max_queue_per_tenant=100, max_queue_total=1000)


def served(scheduler: FairScheduler, tenant: str, cost: float, now: float = 0.0) -> None:
    """Admit and complete one request of ``cost`` for ``tenant``."""
    request = QueuedRequest(tenant, cost)
    scheduler.admit_direct(request, now)
    scheduler.complete(request, cost, now)


def test_counter_of_a_tracked_tenant_moves() -> None:
    s = fair()
    served(s, "a", 10.0)
    assert s.counter("a") == 10.0
    s.charge_external("a", 25.0, 1.0)
    assert s.counter("a") == 35.0
    s.charge_external("a", -5.0, 2.0)  # another gateway corrected its estimate down
    assert s.counter("a") == 30.0


def test_untracked_tenant_is_ignored() -> None:
    s = fair()
    s.charge_external("ghost", 100.0, 0.0)
    assert s.counter("ghost") is None
    assert s.tracked_tenants() == 0


def test_heap_order_follows_the_external_charge() -> None:
    s = fair()
    # Both backlogged, "a" first by its smaller counter.
    served(s, "a", 1.0)
    served(s, "b", 2.0)
    for _ in range(3):
        s.push(QueuedRequest("a", 1.0), 0.0)
        s.push(QueuedRequest("b", 1.0), 0.0)
    assert s.counter("a") == 1.0
    # "a" was served 10 elsewhere: "b" now has the smaller counter and goes first.
    s.charge_external("a", 10.0, 0.0)
    first = s.pop(0.0)
    assert first is not None and first.tenant == "b"
    # Take it back: "a" is the smallest again.
    s.charge_external("a", -10.0, 0.0)
    nxt = s.pop(0.0)
    assert nxt is not None and nxt.tenant == "a"


def test_idle_tenant_carries_the_charge_into_its_next_lift() -> None:
    s = fair()
    served(s, "a", 5.0)
    served(s, "b", 5.0)
    s.charge_external("a", 50.0, 0.0)  # idle here, served elsewhere
    s.push(QueuedRequest("b", 1.0), 0.0)
    s.push(QueuedRequest("a", 1.0), 0.0)  # joins above "b": the lift does not lower it
    first = s.pop(0.0)
    assert first is not None and first.tenant == "b"
    assert s.counter("a") == 55.0


def test_fifo_ignores_it() -> None:
    s: Scheduler = FifoScheduler(10, 10)
    s.push(QueuedRequest("a", 1.0), 0.0)
    s.charge_external("a", 5.0, 0.0)
    assert s.depth("a") == 1
