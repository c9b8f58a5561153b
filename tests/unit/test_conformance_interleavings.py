"""The scheduler conformance suite's property, for every policy: no interleaving of
push, pop, remove, complete, direct admission and waiting loses or duplicates a request,
breaks a bound, or serves out of order (the suite is explained in
test_conformance_fairness.py)."""

from __future__ import annotations

from collections import Counter
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.extproc.scheduling import FairScheduler, FifoScheduler, QueuedRequest, QueueFull, fifo

from testkit.conformance import Policy, make_fair, make_fifo

_op = st.one_of(
    st.tuples(
        st.just("push"),
        st.integers(0, 3),
        st.integers(1, 100),
        st.sampled_from([0.5, 1.0, 3.0]),
        st.integers(0, 2),
    ),
    st.tuples(st.just("pop")),
    st.tuples(st.just("remove"), st.integers(0, 200)),
    st.tuples(st.just("complete"), st.integers(0, 200), st.integers(0, 200)),
    st.tuples(st.just("direct"), st.integers(0, 3), st.integers(1, 100)),
    st.tuples(st.just("wait"), st.floats(0, 3)),
)


@pytest.mark.parametrize("make", [make_fifo, make_fair], ids=["fifo", "fair"])
@settings(max_examples=300, deadline=None)
@given(ops=st.lists(_op, max_size=80))
def test_interleavings_never_lose_or_duplicate(make: Policy, ops: list[tuple[Any, ...]]) -> None:
    with patch.object(fifo, "_SLACK", 0):  # compact the lazy queues as often as possible
        check_interleaving(make(5, 12), ops)


def check_interleaving(
    scheduler: FifoScheduler | FairScheduler, ops: list[tuple[Any, ...]]
) -> None:
    if isinstance(scheduler, FairScheduler):
        scheduler.idle_ttl_s = 1.0  # expiry happens mid-sequence
    now = 0.0
    queued: dict[QueuedRequest, None] = {}  # insertion-ordered: arrival order
    pushed: list[QueuedRequest] = []
    admitted: list[QueuedRequest] = []
    priority: dict[str, int] = {}  # the newest request's class per tenant
    for op in ops:
        match op:
            case ("push", t, cost, weight, prio):
                request = QueuedRequest(f"t{t}", cost, weight, prio)
                full = len(queued) >= 12 or sum(r.tenant == request.tenant for r in queued) >= 5
                try:
                    scheduler.push(request, now)
                except QueueFull:
                    assert full
                    continue
                assert not full
                queued[request] = None
                pushed.append(request)
                priority[request.tenant] = prio
            case ("pop",):
                request = scheduler.pop(now)
                if not queued:
                    assert request is None
                    continue
                assert request in queued  # never invented, lost or handed out twice
                mine = [r for r in queued if r.tenant == request.tenant]
                assert request is mine[0]  # FIFO within a tenant
                if isinstance(scheduler, FifoScheduler):
                    assert request is next(iter(queued))
                else:
                    assert priority[request.tenant] == min(priority[r.tenant] for r in queued)
                del queued[request]
                admitted.append(request)
            case ("remove", i):
                if pushed:
                    request = pushed[i % len(pushed)]
                    assert scheduler.remove(request) == (request in queued)
                    queued.pop(request, None)
            case ("complete", i, actual):
                if admitted:
                    scheduler.complete(admitted[i % len(admitted)], actual, now)
            case ("direct", t, cost):
                if not queued:
                    request = QueuedRequest(f"t{t}", cost)
                    scheduler.admit_direct(request, now)
                    admitted.append(request)
                    priority[request.tenant] = 0
            case ("wait", dt):
                now += dt
        assert len(scheduler) == len(queued)
        assert scheduler.depths() == dict(Counter(r.tenant for r in queued))
    drained = []
    while (request := scheduler.pop(now)) is not None:
        drained.append(request)
    assert sorted(map(id, drained)) == sorted(map(id, queued))
