"""A pool's pacer at work: holding back requests until their turn, and turns given back.

``pacing.py`` says how fast the admissions of tenants that are not light may go; here a
paced request waits in the pool's queue while a timer runs to its turn, then the pool
dispatches again, and the turns that light requests took come back when they end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from fairlane.extproc.pacing import AdmissionPacer
from fairlane.extproc.scheduling import QueuedRequest


class PoolPacing:
    def __init__(self, clock: Callable[[], float], dispatch: Callable[[], None]) -> None:
        self.pacer: AdmissionPacer | None = None  # spaces heavy tenants' admissions out
        self._clock = clock
        self._dispatch = dispatch
        self._light_turns: dict[QueuedRequest, float] = {}  # in flight: pacer turns taken
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer fires, on self._clock

    def holds_back(self, request: QueuedRequest, now: float) -> bool:
        """Must this request of a tenant that is not light (``request.light``, just
        decided) wait for the pacer? Then a timer is set to dispatch when it may go."""
        if self.pacer is None or request.light:
            return False
        delay = self.pacer.delay(now)
        if delay <= 0:
            return False
        if self._timer is not None and now + delay < self._due - 0.001:
            self._timer.cancel()  # the turn came closer (the measured rate rose)
            self._timer = None
        if self._timer is None:
            self._due = now + delay
            self._timer = asyncio.get_running_loop().call_later(delay, self._turn)
        return True

    def _turn(self) -> None:
        self._timer = None
        self._dispatch()

    def admitted(self, request: QueuedRequest) -> None:
        """The admission takes a pacer turn; a light tenant's comes back at release
        (``pacing.py``: light tenants' growth, not their steady holdings, slows the rest)."""
        if self.pacer is None:
            return
        turns = self.pacer.admitted(self._clock(), paced=not request.light)
        if request.light and turns > 0:
            self._light_turns[request] = turns

    def released(self, request: QueuedRequest, now: float, slots: int) -> None:
        """The request's response ended; ``slots``: those paced requests may fill."""
        turns = self._light_turns.pop(request, 0.0)
        if self.pacer is not None:
            # How long paced (heavy) requests hold a slot: how fast the slots they may
            # fill turn over. Light ones, short or long, take turns and give them back.
            held_s = 0.0 if request.light else now - request.admitted_at
            self.pacer.completed(now, held_s, slots)
            self.pacer.returned(now, turns)
