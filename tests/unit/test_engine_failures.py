"""A replica the request never reached is taken out of its pool for a while, so that a
crashed replica cannot drain the pool's shared queue into instant failures: each such
failure frees its slot at once, and the next queued request would be sent to the same
dead replica. What the engine started to answer is not its fault here. The pool's queue
waits meanwhile: only the supervisor's word that the engine is down refuses it."""

from __future__ import annotations

import asyncio

import pytest

from fairlane.envoy.common import REQUEST_ID_HEADER
from fairlane.extproc import engine_health
from fairlane.extproc.accounting import Usage
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.observe import GatewayCollector
from fairlane.extproc.outcomes import Admitted, Pending
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import RequestInfo, request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import parse_policy

from testkit.records import record, replay


def replicas(*names: str) -> tuple[Gateway, EnginePool]:
    """A gateway whose one pool has these replicas of one slot each, all up."""
    engine = "{kind: sim, models: [m], max_inflight: 1, headroom: 0}"
    engines = "".join(f"  {name}: {engine}\n" for name in names)
    g = Gateway(compile_policy(parse_policy(f"version: 1\nengines:\n{engines}"), 1), Metrics())
    for name in g.runtime.policy.engines:
        g.health.set_state(name, EngineState.UP)
    (pool,) = g.pools.values()
    return g, pool


def ask(request_id: str) -> RequestInfo:
    return request_info(
        {"x-tenant-id": "alice", "content-length": "40", REQUEST_ID_HEADER: request_id},
        {"model": "m", "max_tokens": 40},
    )


@pytest.mark.parametrize(
    ("flags", "engine_answered", "taken_out"),
    [
        (("upstream_connection_failure",), False, True),  # UF: connection refused
        (("no_healthy_upstream",), False, True),  # UH: Envoy has no endpoint for it
        (("upstream_remote_reset",), False, True),  # UR before the response began
        (("upstream_connection_termination",), False, True),  # UC likewise
        (("upstream_remote_reset",), True, False),  # cut mid-answer: it took it
        ((), True, False),  # an answer, whatever its status
    ],
)
async def test_a_replica_the_request_never_reached_is_taken_out(
    flags: tuple[str, ...], engine_answered: bool, taken_out: bool
) -> None:
    g, pool = replicas("r1", "r2")
    first = g.begin(ask("first"))
    second = g.begin(ask("second"))
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert {first.replica, second.replica} == {"r1", "r2"}
    queued = g.begin(ask("queued"))
    assert isinstance(queued, Pending) and pool.queued == 1
    replay(g, record("first", 503, lease="first", flags=flags, engine_answered=engine_answered))
    failed = pool.replicas[first.replica]
    assert (failed.state is EngineState.QUARANTINED) is taken_out
    quarantines = g.metrics.registry.get_sample_value(
        "fairlane_engine_quarantines_total", {"engine": first.replica}
    )
    assert quarantines == (1 if taken_out else None)
    # The queued request waits for the healthy replica instead of following the
    # first one to the replica that failed it.
    assert pool.queued == (1 if taken_out else 0)
    assert failed.inflight == (0 if taken_out else 1)
    g.finish("second", 200, Usage(), None)
    healthy = pool.replicas[second.replica]
    assert pool.queued == 0 and healthy.inflight == (1 if taken_out else 0)


async def test_the_queue_waits_for_a_quarantined_engine_until_the_supervisor_has_a_word(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One engine, one refused connection: its queue is not refused (that engine may be
    fine, the connection a fluke); the supervisor's report decides."""
    monkeypatch.setattr(engine_health, "QUARANTINE_S", 0.05)
    g, pool = replicas("r1")
    admitted = g.begin(ask("first"))
    queued = g.begin(ask("queued"))
    assert isinstance(admitted, Admitted) and isinstance(queued, Pending)
    replay(g, record("first", 503, lease="first", flags=("upstream_connection_failure",)))
    assert pool.replicas["r1"].state is EngineState.QUARANTINED and pool.queued == 1
    assert isinstance(g.begin(ask("new")), Pending)  # new requests queue too
    await asyncio.sleep(0.1)  # the quarantine ends: the supervisor still says up
    assert isinstance(await queued.result(), Admitted)
    g.health.set_state("r1", EngineState.DOWN)  # now it says down: refused at once
    assert pool.queued == 0
    refused = g.begin(ask("later"))
    assert isinstance(refused, Rejection) and refused.reason is Reason.ENGINE_UNAVAILABLE


def test_a_crash_loop_the_supervisor_reports_is_a_gauge() -> None:
    g, _ = replicas("a", "b")
    info = {"a": {"state": "down", "crash_loop": True}, "b": {"state": "up"}}
    (family,) = [m for m in GatewayCollector(g, info).collect() if m.name.endswith("looping")]
    looping = {s.labels["engine"]: s.value for s in family.samples}
    assert looping == {"a": 1.0, "b": 0.0}
