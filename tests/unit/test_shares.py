"""Shares: each active tenant's slots against its weighted share of a pool."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.extproc.shares import MAX_LINGERING, Shares


def test_a_tenant_alone_is_under_its_share_and_light() -> None:
    shares = Shares()
    shares.hold("flood", 1.0, inflight=8, waiting=50)
    assert shares.under("flood", 8) and shares.light("flood", 8)  # nothing is held back


def test_weights_set_the_share() -> None:
    shares = Shares()
    shares.hold("heavy", 2.0, inflight=6)  # share of 9 slots: 6
    shares.hold("light", 1.0, inflight=2)  # share: 3
    assert not shares.light("heavy", 9) and not shares.under("heavy", 9)
    assert shares.under("light", 9) and shares.light("light", 9)
    shares.unhold("heavy", inflight=1)
    assert shares.under("heavy", 9) and shares.light("heavy", 9)


def test_a_backlogged_tenant_is_not_light_while_it_holds_less_than_its_share() -> None:
    shares = Shares()
    shares.hold("flood", 1.0, inflight=1, waiting=5)  # share of 8 slots: 4
    shares.hold("quiet", 1.0, inflight=1, waiting=1)
    assert shares.under("flood", 8) and not shares.light("flood", 8)
    assert shares.under("quiet", 8) and shares.light("quiet", 8)


def test_waiting_requests_make_a_tenant_active_and_count_in_the_weights() -> None:
    shares = Shares()
    shares.hold("flood", 1.0, inflight=4)
    shares.hold("quiet", 1.0, waiting=1)
    assert shares.waiting("quiet") == 1
    assert not shares.light("flood", 4)  # its share halved when quiet began to wait
    shares.unhold("quiet", waiting=1)
    assert len(shares) == 1
    assert shares.light("flood", 4)


def test_a_tenant_is_forgotten_once_it_holds_and_waits_for_nothing() -> None:
    shares = Shares()
    for tenant in (f"t{i}" for i in range(2000)):
        shares.hold(tenant, 1.0, inflight=1)
        shares.unhold(tenant, inflight=1)
    assert len(shares) == 0
    assert shares.waiting("t1") == 0
    shares.unhold("never-seen", inflight=1)  # a no-op, not an error
    assert len(shares) == 0


def test_ids_of_a_shared_tenant_split_its_share() -> None:
    shares = Shares()
    shares.hold("unknown", 1.0, inflight=6, waiting=20, client="flood")  # share of 8: 4
    assert shares.light("unknown", 8, client="quiet")  # a new id: 1 of its share of 4
    shares.hold("unknown", 1.0, inflight=1, client="quiet")
    assert len(shares) == 1  # one tenant, two ids
    assert shares.under("unknown", 8, client="quiet") and shares.light("unknown", 8, client="quiet")
    assert not shares.under("unknown", 8, client="flood")
    assert not shares.light("unknown", 8, client="flood")
    assert shares.waiting("unknown", "flood") == 20 and shares.waiting("unknown") == 0


def test_ids_invented_by_the_thousand_have_one_tenants_share() -> None:
    shares = Shares()
    shares.hold("alice", 1.0, inflight=1)
    for i in range(3):  # 3 ids at 1 slot each: the unknown tenant's 32 of 64 split 3 ways
        assert shares.light("unknown", 64, client=f"id-{i}")
        shares.hold("unknown", 1.0, inflight=1, client=f"id-{i}")
    assert shares.light("alice", 64)
    for i in range(3, 40):  # past 32 ids the next one's share is under its one request
        shares.hold("unknown", 1.0, inflight=1, client=f"id-{i}")
    assert not shares.light("unknown", 64, client="id-40")
    assert not shares.under("unknown", 64, client="id-0")
    assert shares.light("alice", 64) and len(shares) == 2
    for i in range(40):
        shares.unhold("unknown", inflight=1, client=f"id-{i}")
    assert len(shares) == 1 and shares.light("alice", 64)


def test_an_id_over_its_split_is_not_light_though_its_tenant_is_under_its_share() -> None:
    """Equal split, not the tenant's unused share: a shared tenant alone in the pool has
    all of it, and its flooding id would then go unpaced past a quiet id."""
    shares = Shares()
    shares.hold("unknown", 1.0, inflight=20, waiting=5, client="big")  # the pool: 64
    shares.hold("unknown", 1.0, inflight=1, client="small")  # split: 32 each
    assert shares.light("unknown", 64, client="big")  # 25 of 32
    shares.hold("unknown", 1.0, waiting=20, client="big")  # 45: the tenant is still under
    assert not shares.light("unknown", 64, client="big")
    assert shares.light("unknown", 64, client="small")
    assert shares.light("unknown", 64, client="new")  # 1 of 64 / 3


_share_ops = st.lists(
    st.tuples(
        st.sampled_from(["hold", "unhold"]),
        st.sampled_from([("a", ""), ("b", ""), ("unknown", "x"), ("unknown", "y")]),
        st.integers(0, 3),
        st.integers(0, 3),
    ),
    max_size=60,
)
_WEIGHTS = {"a": 1.0, "b": 2.0, "unknown": 0.5}


@settings(max_examples=300, deadline=None)
@given(ops=_share_ops)
def test_incremental_bookkeeping_matches_a_recount(ops: list[tuple[Any, ...]]) -> None:
    """Light and under, after any holds and releases, as recounted from the holdings."""
    shares = Shares()
    held: dict[tuple[str, str], list[int]] = {}
    for op, (tenant, client), inflight, waiting in ops:
        if op == "hold":
            shares.hold(tenant, _WEIGHTS[tenant], inflight, waiting, client)
            if inflight or waiting or (tenant, client) in held:
                mine = held.setdefault((tenant, client), [0, 0])
                mine[0] += inflight
                mine[1] += waiting
            else:
                held[tenant, client] = [0, 0]  # held with nothing: dropped at its next unhold
        else:
            shares.unhold(tenant, inflight, waiting, client)
            if (tenant, client) in held:
                mine = held[tenant, client]
                mine[0], mine[1] = max(0, mine[0] - inflight), max(0, mine[1] - waiting)
                if mine == [0, 0]:
                    del held[tenant, client]
        for tenant, client in [("a", ""), ("b", ""), ("unknown", "x"), ("unknown", "z")]:
            for besides in (0, 1):
                expected = recount(held, tenant, client, 16, besides)
                assert shares.light(tenant, 16, besides, client) == expected
            assert shares.under(tenant, 16, client) == recount(held, tenant, client, 16, None)
    assert len(shares) == len({t for t, _ in held})


def recount(
    held: dict[tuple[str, str], list[int]],
    tenant: str,
    client: str,
    capacity: int,
    besides: int | None,
) -> bool:
    tenants = {t for t, _ in held}
    mine = [v for (t, _), v in held.items() if t == tenant]
    if tenant not in tenants or ((tenant, client) not in held and not client):
        return True
    if (tenant, client) in held and len(held) == 1:
        return True
    active_weight = sum(_WEIGHTS[t] for t in tenants)
    if (tenant, client) not in held:
        own, clients = 1, len(mine) + 1
    else:
        inflight, waiting = held[tenant, client]
        own, clients = inflight, len(mine)
        if besides is not None:
            own += max(0, waiting - besides)
    return own * clients * active_weight - capacity * _WEIGHTS[tenant] < 0


def test_a_tenant_lingers_after_its_last_request_ended() -> None:
    now = [0.0]
    shares = Shares(lambda: now[0], linger_s=30.0)
    shares.hold("quiet", 1.0, inflight=1)
    shares.hold("flood", 1.0, inflight=6, waiting=20)
    shares.unhold("quiet", inflight=1)  # its short answer ended
    now[0] = 29.0
    assert len(shares) == 2 and not shares.under("flood", 8)  # share still 4 of 8
    assert shares.light("quiet", 8) and shares.under("quiet", 8)
    now[0] = 30.0
    assert len(shares) == 1 and shares.under("flood", 8)  # alone again: the whole pool
    shares.hold("quiet", 1.0, inflight=1)  # back: a fresh stake
    shares.unhold("quiet", inflight=1)
    shares.hold("quiet", 1.0, waiting=1)  # back within the linger: no longer idle
    now[0] = 100.0
    assert len(shares) == 2 and shares.waiting("quiet") == 1


def test_idle_holders_are_capped() -> None:
    shares = Shares(lambda: 0.0, linger_s=3600.0)
    for i in range(MAX_LINGERING + 50):
        shares.hold("unknown", 1.0, inflight=1, client=f"id-{i}")
        shares.unhold("unknown", inflight=1, client=f"id-{i}")
    assert len(shares._holdings) == MAX_LINGERING  # the oldest were dropped
    shares.hold("alice", 1.0, inflight=1)
    assert len(shares) == 2
