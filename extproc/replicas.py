"""One engine replica's slots and health, as the admission pool sees them."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class EngineState(Enum):
    UP = "up"
    STARTING = "starting"  # requests wait in the queue for it
    IDLE = "idle"  # a lazy engine not loaded: its requests wait, and are what loads it
    # It failed a request it never received (a refused connection): its requests wait
    # for it, for a short while, until the supervisor has checked it.
    QUARANTINED = "quarantined"
    DOWN = "down"  # requests are refused at once


class QueueTimeout(Exception):
    pass


class EngineUnavailable(Exception):
    pass


@dataclass(slots=True)
class Replica:
    name: str
    capacity: int
    inflight: int = 0
    state: EngineState = EngineState.STARTING

    @property
    def free(self) -> int:
        return self.capacity - self.inflight if self.state is EngineState.UP else 0


def reserved_slots(capacity: int, headroom: float) -> int:
    """The ``headroom`` fraction of ``capacity`` slots, never all of them."""
    return min(int(capacity * headroom), max(0, capacity - 1))
