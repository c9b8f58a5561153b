"""A replica the request never reached is taken out of its pool for a while, so that a
crashed replica cannot drain the pool's shared queue into instant failures: each such
failure frees its slot at once, and the next queued request would be sent to the same
dead replica. What the engine started to answer is not its fault here."""

from __future__ import annotations

import pytest

from fairlane.extproc.accounting import Usage
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.outcomes import Admitted, Pending
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import RequestInfo, request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import parse_policy

from testkit.records import record, replay

POLICY = """
version: 1
engines:
  r1: {kind: sim, models: [m], max_inflight: 1, headroom: 0}
  r2: {kind: sim, models: [m], max_inflight: 1, headroom: 0}
"""


def replicas() -> tuple[Gateway, EnginePool]:
    g = Gateway(compile_policy(parse_policy(POLICY), 1), Metrics())
    for name in ("r1", "r2"):
        g.health.set_state(name, EngineState.UP)
    return g, g.pools["r1+r2"]


def ask(request_id: str) -> RequestInfo:
    return request_info(
        {"x-tenant-id": "alice", "content-length": "40", "x-fairlane-request-id": request_id},
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
    g, pool = replicas()
    first = g.begin(ask("first"))
    second = g.begin(ask("second"))
    assert isinstance(first, Admitted) and isinstance(second, Admitted)
    assert {first.replica, second.replica} == {"r1", "r2"}
    queued = g.begin(ask("queued"))
    assert isinstance(queued, Pending) and pool.queued == 1
    replay(g, record("first", 503, lease="first", flags=flags, engine_answered=engine_answered))
    failed = pool.replicas[first.replica]
    assert (failed.state is EngineState.DOWN) is taken_out
    # The queued request waits for the healthy replica instead of following the
    # first one to the replica that failed it.
    assert pool.queued == (1 if taken_out else 0)
    assert failed.inflight == (0 if taken_out else 1)
    g.finish("second", 200, Usage(), None)
    healthy = pool.replicas[second.replica]
    assert pool.queued == 0 and healthy.inflight == (1 if taken_out else 0)
