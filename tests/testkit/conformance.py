"""The scheduler conformance harness: the policies under test, and a discrete-event
simulator to drive them.

The simulator is an engine with ``slots`` slots, each request holding one for ``actual
tokens / rate`` simulated seconds, and tenants as open-loop or always-backlogged sources.
``policies`` runs a test against every policy; FIFO, the baseline, must fail the tests
that name a property it lacks. ``bound`` is the fairness bound explained in
tests/unit/test_conformance_fairness.py.
"""

from __future__ import annotations

import functools
import heapq
import itertools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest

from fairlane.extproc.scheduling import FairScheduler, FifoScheduler, QueuedRequest, Scheduler

IDLE_TTL_S = 600.0
Policy = Callable[[int, int], FifoScheduler | FairScheduler]


def make_fifo(per_tenant: int = 10_000, total: int = 100_000) -> FifoScheduler:
    return FifoScheduler(per_tenant, total)


def make_fair(per_tenant: int = 10_000, total: int = 100_000) -> FairScheduler:
    return FairScheduler(per_tenant, total, idle_ttl_s=IDLE_TTL_S)


def policies(fifo_lacks: str | None = None) -> Callable[[Callable[..., None]], Any]:
    """Run a test for every policy; ``fifo_lacks`` names what FIFO must fail.

    FIFO's expected failure is asserted (``pytest.raises``), not marked ``xfail``: an
    xfail makes pytest format the traceback, which on CPython 3.11.7 can crash the whole
    session (``ast.parse`` raising SystemError, cpython#106905).
    """

    def decorate(test: Callable[..., None]) -> Any:
        @functools.wraps(test)
        def run(make: Policy, **kwargs: Any) -> None:
            if make is make_fifo and fifo_lacks:
                with pytest.raises(AssertionError):
                    test(make, **kwargs)
            else:
                test(make, **kwargs)

        ids = [pytest.param(make_fifo, id="fifo"), pytest.param(make_fair, id="fair")]
        return pytest.mark.parametrize("make", ids)(run)

    return decorate


def bound(slots: int, max_cost: float, min_weight: float = 1.0) -> float:
    return 2 * (slots + 1) * max_cost / min_weight


# -- the simulator -------------------------------------------------------------------------


class Sim:
    """An engine with ``slots`` slots in front of a scheduler, on a simulated clock.

    Admission follows the controller's contract: ``admit_direct`` when a slot is free and
    nothing waits, else ``push``; every freed slot is refilled with ``pop``. After every
    event the engine is checked to be work conserving.
    """

    def __init__(self, scheduler: Scheduler, slots: int, rate: float = 1.0) -> None:
        self.scheduler = scheduler
        self.slots = slots
        self.rate = rate  # tokens per second per slot
        self.now = 0.0
        self.running: set[QueuedRequest] = set()
        self.served: defaultdict[str, float] = defaultdict(float)  # completed actual tokens
        self.admissions: list[tuple[float, QueuedRequest]] = []
        self.on_admit: list[Callable[[QueuedRequest], None]] = []
        self.checks: list[Callable[[], None]] = [self._work_conserving]
        self._actual: dict[QueuedRequest, float] = {}
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, time: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._events, (time, next(self._order), action))

    def submit(self, request: QueuedRequest, actual: float | None = None) -> None:
        self._actual[request] = request.cost if actual is None else actual
        request.enqueued_at = self.now
        if len(self.running) < self.slots and len(self.scheduler) == 0:
            self.scheduler.admit_direct(request, self.now)
            self._start(request)
        else:
            self.scheduler.push(request, self.now)

    def run_until(self, until: float) -> None:
        while self._events and self._events[0][0] <= until:
            self.now, _, action = heapq.heappop(self._events)
            action()
            for check in self.checks:
                check()
        self.now = until

    def _start(self, request: QueuedRequest) -> None:
        self.running.add(request)
        self.admissions.append((self.now, request))
        self.at(self.now + self._actual[request] / self.rate, functools.partial(self._end, request))
        for hook in self.on_admit:
            hook(request)

    def _end(self, request: QueuedRequest) -> None:
        self.running.remove(request)
        actual = self._actual.pop(request)
        self.served[request.tenant] += actual
        self.scheduler.complete(request, actual, self.now)
        while len(self.running) < self.slots:
            nxt = self.scheduler.pop(self.now)
            if nxt is None:
                break
            self._start(nxt)

    def _work_conserving(self) -> None:
        assert len(self.running) == self.slots or len(self.scheduler) == 0, (
            f"t={self.now}: {self.slots - len(self.running)} slots idle, "
            f"{len(self.scheduler)} waiting"
        )


class Backlogged:
    """A tenant that keeps ``depth`` requests queued: each admission is replaced."""

    def __init__(
        self,
        sim: Sim,
        tenant: str,
        cost: Callable[[], float],
        *,
        depth: int = 5,
        weight: float = 1.0,
        priority: int = 0,
        actual: Callable[[float], float] | None = None,
    ) -> None:
        self.sim, self.tenant, self.cost, self.depth = sim, tenant, cost, depth
        self.weight, self.priority, self.actual = weight, priority, actual
        self.active = False
        sim.on_admit.append(self._replace)

    def start(self) -> None:
        self.active = True
        for _ in range(self.depth):
            self._new()

    def stop(self) -> None:
        self.active = False

    def _new(self) -> None:
        cost = self.cost()
        request = QueuedRequest(self.tenant, cost, self.weight, self.priority)
        self.sim.submit(request, None if self.actual is None else self.actual(cost))

    def _replace(self, request: QueuedRequest) -> None:
        if self.active and request.tenant == self.tenant:
            self._new()


def fixed(cost: float) -> Callable[[], float]:
    return lambda: cost


def check_bounded(
    sim: Sim,
    a: str,
    b: str,
    limit: float,
    weights: tuple[float, float] = (1, 1),
    *,
    only_ahead: bool = False,
) -> None:
    """Assert the fairness bound between ``a`` and ``b`` after every event from now on.

    ``only_ahead``: bound only how far ``a`` may get ahead of ``b``.
    """
    start_a, start_b = sim.served[a], sim.served[b]

    def check() -> None:
        gap = (sim.served[a] - start_a) / weights[0] - (sim.served[b] - start_b) / weights[1]
        assert (gap if only_ahead else abs(gap)) <= limit, (
            f"t={sim.now}: {a} vs {b} differ by {gap:.0f} > {limit:.0f}"
        )

    sim.checks.append(check)
