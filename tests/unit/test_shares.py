"""Shares: each active tenant's slots against its weighted share of a pool."""

from __future__ import annotations

from fairlane.extproc.shares import Shares


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
