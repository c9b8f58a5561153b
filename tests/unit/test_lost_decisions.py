"""Decisions that never reach Envoy: the client left as its slot was granted, or while
its request waited in the queue. The slot comes back and nothing is charged, whichever
of the request's own stream and Envoy's end-of-request record tells the worker first."""

from __future__ import annotations

from collections.abc import AsyncIterator

from envoy.service.ext_proc.v3 import external_processor_pb2 as ep

from fairlane.envoy.common import REQUEST_ID_HEADER
from fairlane.extproc.accounting import Usage
from fairlane.extproc.announce import Announcer
from fairlane.extproc.departed import KEEP_S, MAX_KEPT, Departed
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.outcomes import Admitted, Pending
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import REQUEST_NAMESPACE, RequestInfo, request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.extproc.server import ExtProcServicer
from fairlane.policy_file import parse_policy

from testkit.records import record, replay

POLICY = """
version: 1
tenants:
  alice: {}
  metered: {limits: {tokens_per_minute: 600, burst_seconds: 10}}
engines:
  e: {kind: sim, models: [m], max_inflight: SLOTS, queue: {timeout_s: 5}}
"""


def gateway(slots: int = 1) -> Gateway:
    policy = parse_policy(POLICY.replace("SLOTS", str(slots)))
    g = Gateway(compile_policy(policy, 1), Metrics())
    g.health.set_state("e", EngineState.UP)
    return g


def ask(request_id: str, tenant: str = "alice", max_tokens: int = 40) -> RequestInfo:
    return request_info(
        {"x-tenant-id": tenant, "content-length": "40", REQUEST_ID_HEADER: request_id},
        {"model": "m", "max_tokens": max_tokens},
    )


def admitted(outcome: object) -> Admitted:
    assert isinstance(outcome, Admitted), outcome
    return outcome


def sample(g: Gateway, name: str, **labels: str) -> float | None:
    return g.metrics.registry.get_sample_value(name, labels)


async def test_the_slot_is_kept_under_envoys_request_id() -> None:
    g = gateway(slots=3)
    assert admitted(g.begin(ask("id-1"))).lease_id == "id-1"
    # Without one (not through Envoy), or one already taken: the worker's own.
    assert admitted(g.begin(ask("id-1"))).lease_id not in ("id-1", "")
    assert admitted(g.begin(ask(""))).lease_id != ""
    assert len(g.leases) == 3


async def test_a_record_naming_no_slot_gives_the_granted_one_back() -> None:
    """Status 0 (the client left before any answer) and no lease in the decision
    metadata: the decision never reached Envoy. Nothing is charged."""
    g = gateway()
    admitted(g.begin(ask("gone", tenant="metered")))
    assert g.pools["e"].inflight == 1
    replay(g, record("gone", 0))
    assert g.pools["e"].inflight == 0 and not g.leases
    assert sample(g, "fairlane_leases_withdrawn_total") == 1
    assert sample(g, "fairlane_tokens_total", tenant="metered", model="m", kind="prompt") == 0
    closed = {"tenant": "metered", "model": "m", "outcome": "client_closed"}
    assert sample(g, "fairlane_requests_total", **closed) == 1
    admitted(g.begin(ask("next", tenant="metered", max_tokens=90)))  # the burst is whole


async def test_records_of_answered_requests_are_left_alone() -> None:
    g = gateway()
    admitted(g.begin(ask("served")))
    replay(g, record("served", 502))  # an answer (a refusal): not a lost decision
    assert g.pools["e"].inflight == 1
    replay(g, record("served", 0, lease="served"))  # the decision reached Envoy
    assert g.pools["e"].inflight == 0
    assert sample(g, "fairlane_leases_withdrawn_total") == 0


async def test_a_record_that_comes_before_the_grant_voids_it() -> None:
    """The record and the request's decision stream are read in either order."""
    g = gateway()
    replay(g, record("early", 0))
    admitted(g.begin(ask("early")))
    assert g.pools["e"].inflight == 0 and not g.leases
    admitted(g.begin(ask("early-2")))  # the next request gets the slot
    assert g.pools["e"].inflight == 1


async def test_a_queued_request_whose_stream_ended_leaves_the_queue() -> None:
    """The stream closed before the wait began: `Pending.withdraw()`."""
    g = gateway()
    first = admitted(g.begin(ask("first")))
    pending = g.begin(ask("queued", tenant="metered"))
    assert isinstance(pending, Pending) and g.pools["e"].queued == 1
    pending.withdraw()
    assert g.pools["e"].queued == 0
    g.finish(first.lease_id, 200, Usage(), None)
    assert g.pools["e"].inflight == 0  # the slot was not handed to the departed request
    admitted(g.begin(ask("next", tenant="metered", max_tokens=90)))  # the burst is whole


async def test_a_queued_request_granted_a_slot_as_its_stream_ended_gives_it_back() -> None:
    g = gateway()
    first = admitted(g.begin(ask("first")))
    pending = g.begin(ask("queued"))
    assert isinstance(pending, Pending)
    g.finish(first.lease_id, 200, Usage(), None)  # dispatch hands it the slot
    assert g.pools["e"].inflight == 1
    pending.withdraw()
    assert g.pools["e"].inflight == 0 and g.pools["e"].queued == 0


async def test_a_stream_that_ends_as_the_request_is_queued_leaves_nothing_queued() -> None:
    """The servicer tells Envoy to wait longer (the request is queued) and the stream
    ends before that message is written: the wait never begins, so no one would ever
    take the request out of the queue, or give back the slot dispatch hands it."""
    g = gateway()
    admitted(g.begin(ask("holder")))
    servicer = ExtProcServicer(g, Announcer(g.metrics))

    async def envoy() -> AsyncIterator[ep.ProcessingRequest]:
        message = ep.ProcessingRequest()
        for key, value in (("x-tenant-id", "alice"), ("content-length", "40")):
            message.request_headers.headers.headers.add(key=key, raw_value=value.encode())
        fields = message.metadata_context.filter_metadata[REQUEST_NAMESPACE].fields
        fields["model"].string_value = "m"
        yield message

    stream = servicer.Process(envoy(), None)
    first = await anext(stream)
    assert first.HasField("override_message_timeout") and g.pools["e"].queued == 1
    await stream.aclose()  # gRPC closes an abandoned handler's generator
    assert g.pools["e"].queued == 0
    g.finish("holder", 200, Usage(), None)
    assert g.pools["e"].inflight == 0


def test_departures_are_forgotten_in_time_and_bounded() -> None:
    now = [0.0]
    departed = Departed(lambda: now[0])
    departed.add("a")
    now[0] = KEEP_S + 1
    departed.add("b")
    assert not departed.claim("a")  # too old
    assert departed.claim("b") and not departed.claim("b")  # once
    for i in range(MAX_KEPT + 10):
        departed.add(str(i))
    assert len(departed) == MAX_KEPT
