"""The gateway's slot accounting: begin/finish, queueing, timeouts, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from fairlane.extproc.accounting import Usage
from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.outcomes import Admitted, Pending
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import parse_policy

POLICY = """
version: 1
tenants:
  alice: {}
  bob: {}
  limited: {limits: {requests_per_minute: 60, burst_seconds: 2}}
  metered: {limits: {tokens_per_minute: 600, burst_seconds: 10}}
  daily: {limits: {tokens_per_day: 1000}}
engines:
  e: {kind: sim, models: [m], max_inflight: 2, queue: {max_per_tenant: 2, timeout_s: 0.2}}
"""


def gateway(policy: str = POLICY) -> Gateway:
    g = Gateway(compile_policy(parse_policy(policy), 1), Metrics())
    g.health.set_state("e", EngineState.UP)
    return g


def ask(tenant: str, max_tokens: int = 10, n: int = 1) -> object:
    return request_info(
        {"x-tenant-id": tenant, "content-length": "40"},
        {"model": "m", "max_tokens": max_tokens, "n": n},
    )


def admitted(outcome: object) -> Admitted:
    assert isinstance(outcome, Admitted), outcome
    return outcome


async def test_free_slots_admit_synchronously_and_finish_releases() -> None:
    g = gateway()
    a = admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    admitted(g.begin(ask("bob")))  # type: ignore[arg-type]
    assert g.pools["e"].inflight == 2
    g.finish(a.lease_id, 200, Usage(10, 5), 0.05)
    assert g.pools["e"].inflight == 1
    g.finish(a.lease_id, 200, Usage(), None)  # a duplicate end record is ignored
    assert g.pools["e"].inflight == 1


async def test_full_engine_queues_then_admits_on_release() -> None:
    g = gateway()
    first = admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    pending = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(pending, Pending)
    waiter = asyncio.create_task(pending.result())
    await asyncio.sleep(0)
    g.finish(first.lease_id, 200, Usage(10, 10), None)
    admitted(await waiter)
    assert g.pools["e"].inflight == 2


async def test_queue_timeout_and_queue_full() -> None:
    g = gateway()
    for _ in range(2):
        admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    waits = [g.begin(ask("bob")) for _ in range(2)]  # type: ignore[arg-type]
    assert all(isinstance(p, Pending) for p in waits)
    full = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(full, Rejection) and full.reason is Reason.QUEUE_FULL
    results = await asyncio.gather(*(p.result() for p in waits))  # type: ignore[union-attr]
    assert all(isinstance(r, Rejection) and r.reason is Reason.QUEUE_TIMEOUT for r in results)
    # The access log says whose refusals they were.
    assert {full.tenant} | {r.tenant for r in results} == {"bob"}  # type: ignore[union-attr]
    assert g.pools["e"].queued == 0 and g.pools["e"].inflight == 2


@pytest.mark.parametrize("scheduler", ["fair", "fifo"])
async def test_reloaded_queue_bounds_apply_to_the_next_request(scheduler: str) -> None:
    """queue.max_per_tenant and max_total change with a reload, as the rest of the
    queue settings (they applied only to a pool created anew)."""
    policy = POLICY.replace("max_inflight: 2,", f"max_inflight: 2, scheduler: {scheduler},")
    g = gateway(policy)
    for _ in range(2):
        admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    waiting = [g.begin(ask("bob")) for _ in range(2)]  # type: ignore[arg-type]
    g.apply(
        compile_policy(parse_policy(policy.replace("max_per_tenant: 2", "max_per_tenant: 3")), 2)
    )
    assert isinstance(g.begin(ask("bob")), Pending)  # type: ignore[arg-type]
    full = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(full, Rejection) and full.reason is Reason.QUEUE_FULL
    lowered = policy.replace("max_per_tenant: 2", "max_per_tenant: 1, max_total: 3")
    g.apply(compile_policy(parse_policy(lowered), 3))
    refused = g.begin(ask("carol"))  # type: ignore[arg-type]
    assert isinstance(refused, Rejection) and refused.reason is Reason.QUEUE_FULL
    assert len(waiting) == 2 and g.pools["e"].queued == 3  # those waiting stay


async def test_a_request_above_the_whole_daily_quota_is_told_it_never_fits() -> None:
    g = gateway()
    refused = g.begin(ask("daily", max_tokens=2000))  # type: ignore[arg-type]
    assert isinstance(refused, Rejection) and refused.reason is Reason.INSUFFICIENT_QUOTA
    assert refused.message == (
        "this request may use 2010 tokens (its prompt and max_tokens), more than tenant "
        "'daily''s whole daily quota (1000): lower max_tokens"
    )
    assert refused.retry_after_s is None and refused.tenant == "daily"
    admitted(g.begin(ask("daily", max_tokens=900)))  # type: ignore[arg-type]
    used_up = g.begin(ask("daily", max_tokens=900))  # type: ignore[arg-type]
    assert isinstance(used_up, Rejection) and used_up.retry_after_s  # until midnight


async def test_cancelled_waiter_leaves_no_trace() -> None:
    g = gateway()
    leases = [admitted(g.begin(ask("alice"))) for _ in range(2)]  # type: ignore[arg-type]
    pending = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(pending, Pending)
    task = asyncio.create_task(pending.result())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert g.pools["e"].queued == 0
    for lease in leases:
        g.finish(lease.lease_id, 200, Usage(), None)
    assert g.pools["e"].inflight == 0


async def test_engine_down_refuses_and_flushes_the_queue() -> None:
    g = gateway()
    for _ in range(2):
        admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    pending = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(pending, Pending)
    task = asyncio.create_task(pending.result())
    await asyncio.sleep(0)
    g.health.set_state("e", EngineState.DOWN)
    result = await task
    assert isinstance(result, Rejection) and result.reason is Reason.ENGINE_UNAVAILABLE
    now = g.begin(ask("bob"))  # type: ignore[arg-type]
    assert isinstance(now, Rejection) and now.retry_after_s


async def test_rate_limit_rejects_with_retry_after() -> None:
    g = gateway()
    outcomes = [g.begin(ask("limited")) for _ in range(3)]  # type: ignore[arg-type]
    assert isinstance(outcomes[0], Admitted) and isinstance(outcomes[1], Admitted)
    third = outcomes[2]
    assert isinstance(third, Rejection) and third.reason is Reason.RATE_LIMIT_EXCEEDED
    assert third.tenant == "limited"
    assert third.retry_after_s is not None and third.retry_after_s >= 1


async def test_every_choice_is_charged_to_the_token_bucket() -> None:
    # metered: a burst of 100 tokens, 10 a second; each request's prompt is ~10 tokens.
    g = gateway()
    admitted(g.begin(ask("metered", max_tokens=40)))  # type: ignore[arg-type]
    admitted(g.begin(ask("metered", max_tokens=40)))  # type: ignore[arg-type]
    g = gateway()
    admitted(g.begin(ask("metered", max_tokens=40, n=2)))  # type: ignore[arg-type]
    refused = g.begin(ask("metered", max_tokens=40))  # type: ignore[arg-type]
    assert isinstance(refused, Rejection) and refused.reason is Reason.RATE_LIMIT_EXCEEDED
    # 10 tokens left (100 - 10 - 2 x 40): the next 50 need 40 more, at 10 a second.
    assert refused.retry_after_s == pytest.approx(4.0, abs=1.0)


async def test_stale_leases_are_reclaimed() -> None:
    now = [0.0]
    g = Gateway(compile_policy(parse_policy(POLICY), 1), Metrics(), clock=lambda: now[0])
    g.health.set_state("e", EngineState.UP)
    admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    now[0] = 10.0
    admitted(g.begin(ask("alice")))  # type: ignore[arg-type]
    assert g.expire_leases(max_age_s=5.0) == 1
    assert g.pools["e"].inflight == 1


def test_usage_resolution() -> None:
    assert Usage(3, 4, 9).resolve(100, 200) == (3, 4)  # the engine's own numbers win
    assert Usage(None, None, 9).resolve(100, 200) == (100, 9)  # streamed without usage
    assert Usage().resolve(100, 200) == (100, 200)  # nothing seen: the estimate stands
    # Answered with an error: nothing served, nothing charged, unless the engine says.
    assert Usage(None, None, 0).resolve(100, 200, failed=True) == (0, 0)
    assert Usage().resolve(100, 200, failed=True) == (0, 0)
    assert Usage(3, 4, 9).resolve(100, 200, failed=True) == (3, 4)
    # Pooling (no completion budget) generates nothing, whatever its answer holds.
    assert Usage(3, None, 5).resolve(100, 0) == (3, 0)
    assert Usage(None, None, 5).resolve(100, 0) == (100, 0)
    assert Usage(None, None, 5).resolve(100, 0, failed=True) == (0, 0)


def tokenizer(tenant: str) -> object:
    return request_info(
        {":path": "/tokenize", "x-tenant-id": tenant, "content-length": "4000"},
        {"model": "m", "max_tokens": 500},
    )


async def test_a_tokenizer_request_is_routed_without_a_slot() -> None:
    """/tokenize and the like: to a healthy replica at once, even with every slot held
    and a queue; no lease, no charge; the tenant's request rate still counts them."""
    g = gateway()
    admitted(g.begin(tokenizer("metered")))  # ~1,000 tokens of text, not charged:
    g.finish(admitted(g.begin(ask("metered", max_tokens=80))).lease_id, 200, Usage(), None)
    for tenant in ("alice", "bob"):
        admitted(g.begin(ask(tenant)))
    assert isinstance(g.begin(ask("alice")), Pending)
    routed = admitted(g.begin(tokenizer("alice")))
    assert (routed.lease_id, routed.replica, routed.ticket.cost) == ("", "e", 0)
    assert g.pools["e"].inflight == 2 and g.pools["e"].queued == 1
    for _ in range(2):  # limited: a burst of two requests
        admitted(g.begin(tokenizer("limited")))
    refused = g.begin(tokenizer("limited"))
    assert isinstance(refused, Rejection) and refused.reason is Reason.RATE_LIMIT_EXCEEDED
    g.health.set_state("e", EngineState.DOWN)
    down = g.begin(tokenizer("alice"))
    assert isinstance(down, Rejection) and down.reason is Reason.ENGINE_UNAVAILABLE
