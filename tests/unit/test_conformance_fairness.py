"""The conformance suite every scheduler policy must pass: work conservation and fairness
(bounded unfairness, weights, no starvation, clients sharing a tenant, no credit banked
while idle, priority classes, estimates corrected by actual usage).

Policies are driven by a small discrete-event simulator (``testkit.conformance.Sim``): an
engine with ``slots`` slots, each request holding one for ``actual tokens / rate``
simulated seconds, tenants as open-loop or always-backlogged sources. FIFO is the
baseline: it runs every test too, and must fail the ones that name a property it lacks.

The fairness bound. For two tenants continuously backlogged over a window, with exact
estimates, the weighted tokens completed in the window (W) satisfy

    |W_a / w_a - W_b / w_b| <= 2 * (slots + 1) * max_cost / min_weight.

Why: the scheduler always serves the smallest counter, so the counters (admitted tokens
over weight) of backlogged tenants stay within C = max_cost / min_weight of each other,
giving 2C for a window; completed differs from admitted by what is in flight, at most
slots * C per tenant at each end of the window, giving 2 * slots * C more. It is the VTC
paper's 2x bound with its batch-capacity term as slots * max_cost.

The rest of the suite: queue bounds, state and per-decision cost in
test_conformance_bounds.py, random interleavings of operations in
test_conformance_interleavings.py, and the fair scheduler against a brute-force VTC in
test_conformance_reference_vtc.py.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter

import pytest

from fairlane.extproc.scheduling import QueuedRequest, QueueFull

from testkit.conformance import Backlogged, Policy, Sim, bound, check_bounded, fixed, policies


@policies()
def test_work_conserving_under_open_loop_load(make: Policy) -> None:
    rng = random.Random(7)
    sim = Sim(make(10_000, 100_000), slots=4)
    for i in range(2_000):
        tenant = f"t{rng.randrange(6)}"
        request = QueuedRequest(tenant, rng.uniform(10, 400), rng.choice([1, 2]), rng.randrange(2))
        sim.at(rng.uniform(0, 100_000), functools.partial(sim.submit, request))
        if i % 10 == 0:  # some give up while waiting
            sim.at(rng.uniform(0, 100_000), functools.partial(sim.scheduler.remove, request))
    sim.run_until(200_000)
    assert len(sim.scheduler) == 0 and not sim.running


@policies(fifo_lacks="FIFO serves by arrival: the tenant with the deeper queue gets more")
def test_bounded_unfairness_equal_weights(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    greedy = Backlogged(sim, "greedy", fixed(100), depth=40)
    modest = Backlogged(sim, "modest", fixed(100), depth=4)
    greedy.start()
    modest.start()
    check_bounded(sim, "greedy", "modest", bound(4, 100))
    sim.run_until(100_000)
    assert sim.served["greedy"] + sim.served["modest"] >= 0.99 * 4 * 100_000


@policies(fifo_lacks="FIFO ignores weights")
def test_weights_two_to_one(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    Backlogged(sim, "gold", fixed(100), depth=10, weight=2).start()
    Backlogged(sim, "bronze", fixed(100), depth=10, weight=1).start()
    check_bounded(sim, "gold", "bronze", bound(4, 100), (2, 1))
    sim.run_until(100_000)
    assert sim.served["gold"] == pytest.approx(2 * sim.served["bronze"], rel=0.02)


@policies(fifo_lacks="FIFO counts requests, not tokens")
def test_three_tenants_mixed_sizes(make: Policy) -> None:
    rng = random.Random(3)
    sim = Sim(make(10_000, 100_000), slots=4)
    Backlogged(sim, "small", fixed(50)).start()
    Backlogged(sim, "large", fixed(500)).start()
    Backlogged(sim, "mixed", lambda: rng.uniform(10, 1000)).start()
    for a, b in itertools.combinations(["small", "large", "mixed"], 2):
        check_bounded(sim, a, b, bound(4, 1000))
    sim.run_until(200_000)


@policies(fifo_lacks="FIFO puts a newcomer behind the whole queue")
def test_no_starvation_of_a_newcomer(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    for i in range(1_000):
        sim.submit(QueuedRequest("flood", 100 + i % 7))
    newcomer = QueuedRequest("newcomer", 100)
    sim.at(1_050, functools.partial(sim.submit, newcomer))
    sim.run_until(2_000)
    after = [(t, r) for t, r in sim.admissions if t >= 1_050]
    assert after[0][1] is newcomer  # the very next free slot
    assert after[0][0] - 1_050 <= 106  # within one request's service time


@policies(fifo_lacks="FIFO puts an unnamed newcomer behind the shared tenant's whole queue")
def test_clients_sharing_a_tenant_take_turns(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    for i in range(1_000):
        sim.submit(QueuedRequest("unknown", 100 + i % 7, client="noisy"))
    newcomer = QueuedRequest("unknown", 100, client="quiet")
    sim.at(1_050, functools.partial(sim.submit, newcomer))
    sim.run_until(2_000)
    after = [r for t, r in sim.admissions if t >= 1_050]
    assert newcomer in after[:2]  # behind at most one turn of the client already waiting


@policies(fifo_lacks="FIFO lets one unnamed client fill the shared tenant's queue")
def test_one_client_cannot_fill_a_shared_tenant_queue(make: Policy) -> None:
    scheduler = make(10, 100)
    refused: list[QueueFull] = []
    for _ in range(10):
        try:
            scheduler.push(QueuedRequest("unknown", 1, client="noisy"), 0)
        except QueueFull as full:
            refused.append(full)
    assert [(e.tenant, e.limit) for e in refused] == [("unknown", 5)] * 5  # it holds 5 of 10
    scheduler.push(QueuedRequest("unknown", 1, client="quiet"), 0)
    for _ in range(10):  # a named tenant is one client: its whole bound
        scheduler.push(QueuedRequest("named", 1), 0)
    assert scheduler.depths() == {"unknown": 6, "named": 10}


@pytest.mark.parametrize("idle_s", [300.0, 5_000.0], ids=["state-kept", "state-expired"])
@policies()
def test_no_banked_credit_after_idling(make: Policy, idle_s: float) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    steady = Backlogged(sim, "steady", fixed(10), depth=10)
    sleeper = Backlogged(sim, "sleeper", fixed(10), depth=10)
    steady.start()
    sleeper.start()
    sim.run_until(2_000)
    sleeper.stop()  # its queue drains within ~50 s, then it idles while steady runs ahead
    sim.run_until(2_000 + idle_s)
    sleeper.start()
    # At most its fair share plus the bound: it may not spend credit from idling.
    check_bounded(sim, "sleeper", "steady", bound(4, 10), only_ahead=True)
    sim.run_until(22_000 + idle_s)


@policies(fifo_lacks="FIFO has no priority classes")
def test_priority_classes(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    scheduler = sim.scheduler

    def interactive_first(request: QueuedRequest) -> None:
        if request.tenant != "chat":
            assert scheduler.depth("chat") == 0, f"t={sim.now}: batch served before chat"

    sim.on_admit.append(interactive_first)
    Backlogged(sim, "batch-a", fixed(200), priority=1).start()
    Backlogged(sim, "batch-b", fixed(300), priority=1).start()
    for k in range(1, 40):
        for _ in range(10):
            sim.at(2_000 * k, functools.partial(sim.submit, QueuedRequest("chat", 100)))
    check_bounded(sim, "batch-a", "batch-b", bound(4, 300))
    sim.run_until(100_000)
    assert sim.served["chat"] == 39 * 10 * 100


@policies(fifo_lacks="FIFO does not account for usage")
def test_estimate_correction(make: Policy) -> None:
    sim = Sim(make(10_000, 100_000), slots=4)
    Backlogged(sim, "overestimates", fixed(1000), actual=lambda c: c / 10).start()
    Backlogged(sim, "exact", fixed(1000)).start()
    sim.run_until(100_000)
    served = Counter(r.tenant for _, r in sim.admissions)
    assert served["overestimates"] >= 5 * served["exact"]
    gap = sim.served["overestimates"] - sim.served["exact"]
    assert abs(gap) <= bound(4, 1000)
