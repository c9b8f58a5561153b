"""Which engines fit in the GPU memory budget, and which to unload to make room.

Pure functions over plain numbers so the eviction order is unit-tested alone. An
engine's value is how often it was asked for, decayed by how long ago (half-life five
minutes): frequency and recency in one score. Engines with work in flight or queued,
and pinned ones, are never chosen.
"""

from __future__ import annotations

from dataclasses import dataclass

HALF_LIFE_S = 300.0


@dataclass(frozen=True, slots=True)
class Resident:
    name: str
    memory_gb: float
    pinned: bool
    requests: int  # requests routed to it so far (the worker's count)
    last_request: float  # wall-clock time of the latest one; 0 if never
    busy: bool  # requests in flight or queued


def value(engine: Resident, now: float) -> float:
    age = max(0.0, now - engine.last_request) if engine.last_request else float("inf")
    decay: float = 0.5 ** (age / HALF_LIFE_S)
    return engine.requests * decay


def choose_evictions(
    resident: list[Resident], need_gb: float, budget_gb: float | None, now: float
) -> list[str] | None:
    """Engines to unload, least valuable first, so ``need_gb`` fits; None if it cannot."""
    if budget_gb is None:
        return []
    free = budget_gb - sum(e.memory_gb for e in resident)
    if need_gb <= free:
        return []
    candidates = sorted(
        (e for e in resident if not e.pinned and not e.busy),
        key=lambda e: (value(e, now), e.last_request, e.name),
    )
    chosen: list[str] = []
    for engine in candidates:
        chosen.append(engine.name)
        free += engine.memory_gb
        if need_gb <= free:
            return chosen
    return None
