"""Each active tenant's stake in an engine pool against its weighted share.

A tenant is active while it has a request in flight or waiting; its share of the pool is
capacity x its weight / the weight of all active tenants. Only active tenants are kept,
so memory follows the tenants using the pool now, not every tenant ever seen.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class _Holding:
    """An active tenant's stake in the pool: slots held, requests waiting."""

    weight: float
    inflight: int = 0
    waiting: int = 0


class Shares:
    def __init__(self) -> None:
        self._holdings: dict[str, _Holding] = {}
        self._active_weight = 0.0

    def __len__(self) -> int:
        """Active tenants."""
        return len(self._holdings)

    def waiting(self, tenant: str) -> int:
        holding = self._holdings.get(tenant)
        return 0 if holding is None else holding.waiting

    def hold(self, tenant: str, weight: float, inflight: int = 0, waiting: int = 0) -> None:
        holding = self._holdings.get(tenant)
        if holding is None:
            holding = self._holdings[tenant] = _Holding(weight)
            self._active_weight += weight
        holding.inflight += inflight
        holding.waiting += waiting

    def unhold(self, tenant: str, inflight: int = 0, waiting: int = 0) -> None:
        holding = self._holdings.get(tenant)
        if holding is None:
            return
        holding.inflight = max(0, holding.inflight - inflight)
        holding.waiting = max(0, holding.waiting - waiting)
        if not holding.inflight and not holding.waiting:
            del self._holdings[tenant]
            self._active_weight -= holding.weight
            if not self._holdings:
                self._active_weight = 0.0  # no float residue once nobody is active

    def under(self, tenant: str, capacity: int) -> bool:
        """Does the tenant hold fewer of ``capacity`` slots than its weighted share?"""
        excess = self._excess(tenant, capacity)
        return excess is None or excess < 0

    def light(self, tenant: str, capacity: int, besides: int = 0) -> bool:
        """Is the tenant's demand, slots held plus requests waiting (less ``besides``
        of them: the one being decided), under its weighted share? A tenant backlogged
        past its share is not light even while it holds fewer slots than that: right
        after a wave of its answers ended, say, when its refills would come in a wave."""
        excess = self._excess(tenant, capacity, waiting_besides=besides)
        return excess is None or excess < 0

    def _excess(
        self, tenant: str, capacity: int, waiting_besides: int | None = None
    ) -> float | None:
        """Slots held (and requests waiting, less ``waiting_besides``; None: not counted)
        minus the weighted share, scaled by the active weight (only the sign matters);
        None when it holds nothing or is alone (its share is the whole pool, so it is
        neither over nor short of it)."""
        holding = self._holdings.get(tenant)
        if holding is None or len(self._holdings) == 1:
            return None
        demand = holding.inflight
        if waiting_besides is not None:
            demand += max(0, holding.waiting - waiting_besides)
        return demand * self._active_weight - capacity * holding.weight
