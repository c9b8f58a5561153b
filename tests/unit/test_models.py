"""Eviction order under a GPU memory budget."""

from __future__ import annotations

from fairlane.engines.models import Resident, choose_evictions, value

NOW = 10_000.0


def r(
    name: str,
    gb: float,
    requests: int = 0,
    age: float | None = None,
    *,
    pinned: bool = False,
    busy: bool = False,
) -> Resident:
    last = NOW - age if age is not None else 0.0
    return Resident(name, gb, pinned, requests, last, busy)


def test_nothing_evicted_when_it_fits_or_no_budget() -> None:
    assert choose_evictions([r("a", 30)], 40, 80, NOW) == []
    assert choose_evictions([r("a", 70)], 40, None, NOW) == []


def test_least_valuable_goes_first() -> None:
    resident = [r("hot", 30, 100, age=10), r("cold", 30, 100, age=3600), r("rare", 10, 2, age=5)]
    assert choose_evictions(resident, 20, 80, NOW) == ["cold"]
    assert choose_evictions(resident, 50, 80, NOW) == ["cold", "rare"]
    assert value(resident[1], NOW) < value(resident[0], NOW)


def test_never_used_before_used() -> None:
    resident = [r("used", 40, 5, age=60), r("never", 40)]
    assert choose_evictions(resident, 40, 80, NOW) == ["never"]


def test_pinned_and_busy_are_never_chosen() -> None:
    resident = [r("pinned", 40, pinned=True), r("busy", 30, busy=True), r("free", 10)]
    assert choose_evictions(resident, 10, 80, NOW) == ["free"]
    assert choose_evictions(resident, 30, 80, NOW) is None  # cannot make room


def test_recency_decays_frequency() -> None:
    old_popular = r("old", 40, 1000, age=3600)  # 1000 * 2^-12 ≈ 0.24
    new_occasional = r("new", 40, 3, age=30)  # 3 * 2^-0.1 ≈ 2.8
    assert choose_evictions([old_popular, new_occasional], 40, 80, NOW) == ["old"]
