"""The scheduler conformance suite: queue bounds, queue and tenant state, memory and
per-decision cost, for every policy (the suite is explained in
test_conformance_fairness.py); and the policy factory."""

from __future__ import annotations

import sys
import tracemalloc
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import pytest

from fairlane.extproc.scheduling import (
    FairScheduler,
    FifoScheduler,
    QueuedRequest,
    QueueFull,
    fair,
    fifo,
    make_scheduler,
)

from testkit.conformance import IDLE_TTL_S, Policy, policies


@policies()
def test_queue_bounds(make: Policy) -> None:
    scheduler = make(3, 5)
    for _ in range(3):
        scheduler.push(QueuedRequest("a", 1), 0)
    with pytest.raises(QueueFull) as per_tenant:
        scheduler.push(QueuedRequest("a", 1), 0)
    assert (per_tenant.value.tenant, per_tenant.value.limit) == ("a", 3)
    scheduler.push(QueuedRequest("b", 1), 0)
    scheduler.push(QueuedRequest("b", 1), 0)
    with pytest.raises(QueueFull) as total:
        scheduler.push(QueuedRequest("c", 1), 0)
    assert (total.value.tenant, total.value.limit) == ("c", 5)
    assert len(scheduler) == 5 and scheduler.depths() == {"a": 3, "b": 2}
    popped = scheduler.pop(1)
    assert popped is not None
    scheduler.push(QueuedRequest(popped.tenant, 1), 1)  # room again


@policies()
def test_remove_keeps_depths_exact(make: Policy) -> None:
    scheduler = make(1_000, 10_000)
    requests = [QueuedRequest(f"t{i % 3}", 10) for i in range(300)]
    for r in requests:
        scheduler.push(r, 0)
    for r in requests[::2]:
        assert scheduler.remove(r)
    assert not scheduler.remove(requests[0])  # already removed
    popped = scheduler.pop(1)
    assert popped is not None and popped in requests[1::2]
    assert not scheduler.remove(popped)  # admitted, not queued
    left = [r for r in requests[1::2] if r is not popped]
    assert len(scheduler) == len(left)
    assert scheduler.depths() == dict(Counter(r.tenant for r in left))
    assert all(scheduler.depth(t) == n for t, n in Counter(r.tenant for r in left).items())
    drained = [scheduler.pop(2) for _ in left]
    assert set(map(id, drained)) == set(map(id, left)) and scheduler.pop(2) is None
    assert scheduler.depths() == {} and scheduler.depth("t0") == 0


@policies()
def test_a_request_is_queued_once(make: Policy) -> None:
    scheduler = make(10, 10)
    request = QueuedRequest("a", 1)
    scheduler.push(request, 0)
    with pytest.raises(ValueError, match="already queued"):
        scheduler.push(request, 0)
    assert len(scheduler) == 1 and scheduler.depths() == {"a": 1}
    assert scheduler.pop(0) is request and scheduler.pop(0) is None


@policies()
def test_idle_tenant_state_expires(make: Policy) -> None:
    scheduler = make(10, 10_000)
    for i in range(2_000):
        request = QueuedRequest(f"tenant-{i}", 10)
        scheduler.push(request, i * 0.01)
        assert scheduler.pop(i * 0.01) is request
        scheduler.complete(request, 8, i * 0.01)
    now = 20 + IDLE_TTL_S
    for _ in range(200):  # ordinary traffic after the TTL sweeps the idle state away
        now += 0.1
        request = QueuedRequest("live", 10)
        scheduler.push(request, now)
        assert scheduler.pop(now) is request
        scheduler.complete(request, 10, now)
    assert scheduler.tracked_tenants() <= 1


@policies()
def test_queue_churn_keeps_memory_bounded(make: Policy) -> None:
    """Requests that time out while another waits leave no garbage behind."""
    scheduler = make(10, 100)
    scheduler.push(QueuedRequest("patient", 10), 0)
    churn = [QueuedRequest(f"impatient-{i % 2}", 10) for i in range(2)]
    tracemalloc.start()
    try:
        for step in range(50_000):
            request = churn[step % 2]
            scheduler.push(request, step)
            assert scheduler.remove(request)
            if step == 1_000:
                baseline = tracemalloc.get_traced_memory()[0]
        grown = tracemalloc.get_traced_memory()[0] - baseline
    finally:
        tracemalloc.stop()
    assert grown < 1_000_000, grown  # a stale entry per cycle would be ~5 MB
    assert len(scheduler) == 1 and scheduler.depths() == {"patient": 1}


@contextmanager
def counting_lines() -> Iterator[list[int]]:
    """Count the source lines the scheduler modules execute: a clock-free cost measure."""
    files = {fifo.__file__, fair.__file__}
    count = [0]

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            count[0] += 1
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in files else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield count
    finally:
        sys.settrace(previous)


def counting_names() -> tuple[type[str], list[int]]:
    """A str type for tenant names that counts hashes and comparisons made on it.

    Scans over tenants done in C (``sorted``, ``min``, set algebra) execute no traced line
    but do hash or compare names, so they show up here.
    """
    count = [0]

    class Name(str):
        __slots__ = ()

        def __hash__(self) -> int:
            count[0] += 1
            return str.__hash__(self)

        def __eq__(self, other: object) -> bool:
            count[0] += 1
            return str.__eq__(self, other)

        def __lt__(self, other: str) -> bool:
            count[0] += 1
            return str.__lt__(self, other)

    return Name, count


@policies()
def test_per_decision_cost_independent_of_tenants(make: Policy) -> None:
    def work_per_decision(tenants: int) -> float:
        name, name_ops = counting_names()
        scheduler = make(10, 100_000)
        for i in range(tenants):
            scheduler.push(QueuedRequest(name(f"t{i}"), 10 + i % 13), 0)
        name_ops[0] = 0
        with counting_lines() as lines:
            for step in range(500):
                request = scheduler.pop(step)
                assert request is not None
                scheduler.complete(request, 9, step)
                scheduler.push(QueuedRequest(request.tenant, 10), step)
        return (lines[0] + name_ops[0]) / 500

    few, many = work_per_decision(100), work_per_decision(10_000)
    assert many <= 1.25 * few, (few, many)


def test_make_scheduler() -> None:
    assert isinstance(
        make_scheduler("fifo", max_queue_per_tenant=1, max_queue_total=2), FifoScheduler
    )
    fair_one = make_scheduler("fair", max_queue_per_tenant=1, max_queue_total=2)
    assert isinstance(fair_one, FairScheduler)
    with pytest.raises(ValueError, match="wfq"):
        make_scheduler("wfq", max_queue_per_tenant=1, max_queue_total=2)
