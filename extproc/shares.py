"""Each active tenant's stake in an engine pool against its weighted share.

A tenant is active while it has a request in flight or waiting, and for ``linger_s``
after its last one ended; its share of the pool is capacity x its weight / the weight of
all active tenants. The linger is for a light tenant with short requests and pauses
between them (a chat): without it, it would be inactive most of the time, a flooder
alone would take every slot including the reserved ones, and each of its requests would
wait for the flooder's next completion (seconds, with long answers). Only active
tenants are kept, so memory follows the tenants using the pool now (at most
``MAX_LINGERING`` of them idle), not every tenant ever seen.

The tenant that unnamed ids share (``unknown``) splits its share between its active ids
(``client``), as its queue gives them turns: an unnamed id sending now and then is light
beside an unnamed flooder, while ids invented by the thousand still have one tenant's
share between them. A tenant of its own is one client, ``""``.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

# Lingering holders expired per call: at most one goes idle per call, so the sweep keeps
# up while no call does unbounded work.
_SWEEP_PER_CALL = 16
# Idle holders kept at most, the oldest dropped first (ids invented by the thousand).
MAX_LINGERING = 10_000


@dataclass(slots=True)
class _Holding:
    """An active client's stake in the pool: slots held, requests waiting."""

    inflight: int = 0
    waiting: int = 0


@dataclass(slots=True)
class _Tenant:
    """An active tenant: its weight counts once, however many of its clients are active."""

    weight: float
    clients: int = 0


class Shares:
    def __init__(self, clock: Callable[[], float] = time.monotonic, linger_s: float = 0.0) -> None:
        self.linger_s = linger_s
        self._clock = clock
        self._holdings: dict[tuple[str, str], _Holding] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._active_weight = 0.0
        self._lingering: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> idle since

    def __len__(self) -> int:
        """Active tenants (lingering ones included)."""
        self._expire()
        return len(self._tenants)

    def alone(self, tenant: str, client: str = "") -> bool:
        """Is no other client active in the pool (in flight, waiting or lingering)?"""
        self._expire()
        return len(self._holdings) == int((tenant, client) in self._holdings)

    def waiting(self, tenant: str, client: str = "") -> int:
        holding = self._holdings.get((tenant, client))
        return 0 if holding is None else holding.waiting

    def hold(
        self, tenant: str, weight: float, inflight: int = 0, waiting: int = 0, client: str = ""
    ) -> None:
        self._expire()
        holding = self._holdings.get((tenant, client))
        if holding is not None:
            self._lingering.pop((tenant, client), None)
        else:
            holding = self._holdings[tenant, client] = _Holding()
            state = self._tenants.get(tenant)
            if state is None:
                state = self._tenants[tenant] = _Tenant(weight)
                self._active_weight += weight
            state.clients += 1
        holding.inflight += inflight
        holding.waiting += waiting

    def unhold(self, tenant: str, inflight: int = 0, waiting: int = 0, client: str = "") -> None:
        holding = self._holdings.get((tenant, client))
        if holding is None:
            return
        holding.inflight = max(0, holding.inflight - inflight)
        holding.waiting = max(0, holding.waiting - waiting)
        if holding.inflight or holding.waiting:
            return
        self._lingering[tenant, client] = self._clock()
        self._lingering.move_to_end((tenant, client))
        self._expire()

    def _expire(self) -> None:
        """Drop a few holders idle for longer than ``linger_s`` (or past the cap)."""
        now = self._clock()
        for _ in range(_SWEEP_PER_CALL):
            oldest = next(iter(self._lingering.items()), None)
            if oldest is None:
                return
            (tenant, client), since = oldest
            if since + self.linger_s > now and len(self._lingering) <= MAX_LINGERING:
                return
            del self._lingering[tenant, client]
            self._drop(tenant, client)

    def _drop(self, tenant: str, client: str) -> None:
        del self._holdings[tenant, client]
        state = self._tenants[tenant]
        state.clients -= 1
        if not state.clients:
            del self._tenants[tenant]
            self._active_weight -= state.weight
            if not self._tenants:
                self._active_weight = 0.0  # no float residue once nobody is active

    def under(self, tenant: str, capacity: int, client: str = "") -> bool:
        """Does the client hold fewer of ``capacity`` slots than its weighted share?"""
        excess = self._excess(tenant, client, capacity)
        return excess is None or excess < 0

    def fits(self, tenant: str, weight: float, capacity: int, width: int, client: str = "") -> bool:
        """Do a request's sequences past its first stay under the client's weighted
        share (counting it active)? One request as wide as that is heavy, however
        little its tenant holds: an embeddings batch of thousands, say."""
        if width <= 1:
            return True
        self._expire()
        state = self._tenants.get(tenant)
        weight = state.weight if state is not None else weight
        active = self._active_weight + (0.0 if state is not None else weight)
        clients = (state.clients if state is not None else 0) + int(
            (tenant, client) not in self._holdings
        )
        return (width - 1) * active * clients < capacity * weight

    def light(self, tenant: str, capacity: int, besides: int = 0, client: str = "") -> bool:
        """Is the client's demand, slots held plus requests waiting (less ``besides``
        of them: the one being decided), under its weighted share? A tenant backlogged
        past its share is not light even while it holds fewer slots than that: right
        after a wave of its answers ended, say, when its refills would come in a wave."""
        excess = self._excess(tenant, client, capacity, waiting_besides=besides)
        return excess is None or excess < 0

    def rank(self, tenant: str, client: str = "") -> float:
        """The slots the client holds per unit of its weight (its tenant's, split among
        the tenant's active clients): who has least of the pool for its weight."""
        holding = self._holdings.get((tenant, client))
        state = self._tenants.get(tenant)
        if holding is None or state is None:
            return 0.0
        return holding.inflight * state.clients / state.weight

    def _excess(
        self, tenant: str, client: str, capacity: int, waiting_besides: int | None = None
    ) -> float | None:
        """Slots held (and requests waiting, less ``waiting_besides``; None: not counted)
        minus the weighted share, scaled by the active weight and the tenant's active
        clients (only the sign matters); None when it holds nothing or is alone (its
        share is the whole pool, so it is neither over nor short of it)."""
        self._expire()
        holding = self._holdings.get((tenant, client))
        state = self._tenants.get(tenant)
        if holding is None:
            if not client or state is None:
                return None
            # A new id of a shared tenant that is active already: its share is split one
            # way more, and the request being decided is its demand (else every id
            # invented afresh would read as light).
            return self._active_weight * (state.clients + 1) - capacity * state.weight
        if len(self._holdings) == 1:
            return None
        assert state is not None  # a holding's tenant is active
        demand = holding.inflight
        if waiting_besides is not None:
            demand += max(0, holding.waiting - waiting_besides)
        return demand * self._active_weight * state.clients - capacity * state.weight
