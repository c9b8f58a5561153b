"""The scheduler conformance suite, fair policy only: the fair scheduler against a
brute-force VTC, over random interleavings of operations (the suite is explained in
test_conformance_fairness.py)."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any
from unittest.mock import patch

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.extproc.scheduling import FairScheduler, QueuedRequest, fair


class ReferenceVtc:
    """VTC with priority classes and idle expiry, by brute force: O(tenants) per step."""

    def __init__(self, idle_ttl_s: float) -> None:
        self.ttl = idle_ttl_s
        self.now = float("-inf")
        self.counter: dict[str, float] = {}
        self.pending: defaultdict[str, float] = defaultdict(float)  # in-flight estimates
        self.served_at: dict[str, int] = {}
        self.priority: dict[str, int] = {}
        self.queue: defaultdict[str, list[QueuedRequest]] = defaultdict(list)
        self.inflight: defaultdict[str, set[QueuedRequest]] = defaultdict(set)
        self.idle_since: dict[str, float] = {}
        self.floor: defaultdict[int, float] = defaultdict(float)
        self.admissions = itertools.count()

    def tick(self, now: float) -> None:
        self.now = max(self.now, now)
        for tenant, since in list(self.idle_since.items()):
            if since + self.ttl <= self.now:
                for state in (self.counter, self.served_at, self.priority, self.idle_since):
                    del state[tenant]

    def backlogged(self, priority: int) -> list[str]:
        return [t for t, q in self.queue.items() if q and self.priority.get(t) == priority]

    def join(self, tenant: str, priority: int) -> None:
        others = [u for u in self.backlogged(priority) if u != tenant]
        self.priority[tenant] = priority
        if others:  # the settled counter of the tenant that would be served next
            head = min(others, key=lambda u: (self.counter[u], self.served_at[u]))
            reference = self.counter[head] - self.pending[head]
        else:
            reference = self.floor[priority]
        self.counter[tenant] = max(self.counter[tenant], reference)

    def settled(self, tenant: str) -> float:
        return self.counter[tenant] - self.pending[tenant]

    def busy(self, tenant: str) -> None:
        self.idle_since.pop(tenant, None)
        self.counter.setdefault(tenant, 0.0)
        self.served_at.setdefault(tenant, -1)

    def maybe_idle(self, tenant: str) -> None:
        if not self.queue[tenant] and not self.inflight[tenant]:
            self.idle_since[tenant] = self.now

    def charge(self, request: QueuedRequest) -> None:
        self.counter[request.tenant] += request.cost / request.weight
        self.pending[request.tenant] += request.cost / request.weight
        self.served_at[request.tenant] = next(self.admissions)
        self.inflight[request.tenant].add(request)

    def push(self, request: QueuedRequest) -> None:
        tenant = request.tenant
        self.busy(tenant)
        was_backlogged = bool(self.queue[tenant])
        self.queue[tenant].append(request)
        if not was_backlogged or self.priority[tenant] != request.priority:
            self.join(tenant, request.priority)

    def expected_pop(self) -> list[str]:
        """The tenants whose head may be served next (ties only among the never-served)."""
        classes = [self.priority[t] for t, q in self.queue.items() if q]
        if not classes:
            return []
        tenants = self.backlogged(min(classes))
        best = min((self.counter[t], self.served_at[t]) for t in tenants)
        return [t for t in tenants if (self.counter[t], self.served_at[t]) == best]

    def pop(self, request: QueuedRequest) -> None:
        tenant = request.tenant
        assert self.queue[tenant][0] is request
        self.queue[tenant].pop(0)
        self.charge(request)
        if not self.queue[tenant]:
            self.floor[self.priority[tenant]] = self.settled(tenant)

    def remove(self, request: QueuedRequest) -> bool:
        queue = self.queue[request.tenant]
        if request not in queue:
            return False
        queue.remove(request)
        if not queue:
            self.floor[self.priority[request.tenant]] = self.settled(request.tenant)
            self.maybe_idle(request.tenant)
        return True

    def admit_direct(self, request: QueuedRequest) -> None:
        tenant = request.tenant
        self.busy(tenant)
        if self.queue[tenant]:
            if self.priority[tenant] != request.priority:
                self.join(tenant, request.priority)
            self.charge(request)
        else:
            self.join(tenant, request.priority)
            self.charge(request)
            self.floor[request.priority] = self.settled(tenant)

    def complete(self, request: QueuedRequest, actual: float) -> None:
        if request in self.inflight[request.tenant]:
            self.inflight[request.tenant].remove(request)
            self.counter[request.tenant] += (actual - request.cost) / request.weight
            pending = self.pending[request.tenant] - request.cost / request.weight
            self.pending[request.tenant] = max(0.0, pending)
            self.maybe_idle(request.tenant)


_fair_op = st.one_of(
    st.tuples(
        st.just("push"),
        st.integers(0, 4),
        st.integers(1, 100),
        st.sampled_from([0.5, 1.0, 3.0]),
        st.integers(0, 2),
    ),
    st.tuples(st.just("pop")),
    st.tuples(st.just("remove"), st.integers(0, 200)),
    st.tuples(st.just("complete"), st.integers(0, 200), st.integers(0, 200)),
    st.tuples(st.just("direct"), st.integers(0, 4), st.integers(1, 100), st.integers(0, 2)),
    st.tuples(st.just("wait"), st.floats(0, 3)),
)


@settings(max_examples=400, deadline=None)
@given(ops=st.lists(_fair_op, max_size=100))
def test_fair_scheduler_matches_reference_vtc(ops: list[tuple[Any, ...]]) -> None:
    with patch.object(fair, "_HEAP_SLACK", 0):  # rebuild heaps as often as possible
        scheduler = FairScheduler(100, 1_000, idle_ttl_s=2.0)
        reference = ReferenceVtc(idle_ttl_s=2.0)
        now = 0.0
        pushed: list[QueuedRequest] = []
        admitted: list[QueuedRequest] = []
        for op in ops:
            match op:
                case ("push", t, cost, weight, priority):
                    request = QueuedRequest(f"t{t}", cost, weight, priority)
                    reference.tick(now)
                    scheduler.push(request, now)
                    reference.push(request)
                    pushed.append(request)
                case ("pop",):
                    reference.tick(now)
                    allowed = reference.expected_pop()
                    request = scheduler.pop(now)
                    if request is None:
                        assert not allowed
                        continue
                    assert request.tenant in allowed
                    reference.pop(request)
                    admitted.append(request)
                case ("remove", i):
                    if pushed:
                        request = pushed[i % len(pushed)]
                        assert scheduler.remove(request) == reference.remove(request)
                case ("complete", i, actual):
                    if admitted:
                        request = admitted[i % len(admitted)]
                        reference.tick(now)
                        scheduler.complete(request, actual, now)
                        reference.complete(request, actual)
                case ("direct", t, cost, priority):
                    request = QueuedRequest(f"t{t}", cost, 1.0, priority)
                    reference.tick(now)
                    scheduler.admit_direct(request, now)
                    reference.admit_direct(request)
                    admitted.append(request)
                case ("wait", dt):
                    now += dt
            for tenant in (f"t{t}" for t in range(5)):
                expected = reference.counter.get(tenant)
                assert scheduler.counter(tenant) == (
                    None if expected is None else pytest.approx(expected)
                )
            assert scheduler.tracked_tenants() == len(reference.counter)
