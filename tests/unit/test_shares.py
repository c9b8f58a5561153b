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
