"""Engine slots: who is in the engine now, who waits, and for how long.

One ``EnginePool`` per engine. The pool owns the in-flight count against the engine's
capacity and the futures of waiting requests; which waiting request goes next is the
scheduler's business (``fairlane.extproc.scheduling``), so policies plug in unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum

from fairlane.extproc.scheduling import QueuedRequest, Scheduler


class EngineState(Enum):
    UP = "up"
    STARTING = "starting"  # requests wait in the queue for it
    DOWN = "down"  # requests are refused at once


class QueueTimeout(Exception):
    pass


class EngineUnavailable(Exception):
    pass


class EnginePool:
    def __init__(
        self,
        name: str,
        scheduler: Scheduler,
        capacity: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.scheduler = scheduler
        self.scheduler_kind = ""
        self.capacity = capacity
        self.inflight = 0
        self.requests = 0  # routed here so far: the supervisor's eviction value
        self.last_request = 0.0  # wall-clock time of the latest
        self.state = EngineState.STARTING
        self._clock = clock
        self._waiting: dict[QueuedRequest, asyncio.Future[None]] = {}

    def try_admit(self, request: QueuedRequest) -> bool:
        """Take a free slot at once if nobody is waiting; raises EngineUnavailable."""
        if self.state is EngineState.DOWN:
            raise EngineUnavailable(self.name)
        if self.state is EngineState.UP and self.inflight < self.capacity and not self._waiting:
            self.scheduler.admit_direct(request, self._clock())
            self.inflight += 1
            return True
        return False

    def enqueue(self, request: QueuedRequest) -> asyncio.Future[None]:
        """Queue a request that could not be admitted at once; raises QueueFull."""
        now = self._clock()
        request.enqueued_at = now
        self.scheduler.push(request, now)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[request] = future
        return future

    async def wait(
        self, request: QueuedRequest, future: asyncio.Future[None], timeout_s: float
    ) -> None:
        """Return once the queued request holds a slot; the caller must ``release`` it.

        Raises QueueTimeout, EngineUnavailable, or CancelledError (client gone); in every
        raising case no slot is held.
        """
        try:
            async with asyncio.timeout(timeout_s):
                await future
        except TimeoutError:
            if not _admitted(future):
                self._abandon(request)
                raise QueueTimeout(self.name) from None
            # Admitted in the same tick the timer fired: keep the slot.
        except asyncio.CancelledError:
            if _admitted(future):
                self.release(request, 0.0)
            else:
                self._abandon(request)
            raise

    def release(self, request: QueuedRequest, actual_cost: float) -> None:
        """The request's response ended (or it never reached the engine)."""
        self.inflight = max(0, self.inflight - 1)
        self.scheduler.complete(request, actual_cost, self._clock())
        self._dispatch()

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._dispatch()

    def set_state(self, state: EngineState) -> None:
        self.state = state
        if state is EngineState.DOWN:
            # Waiting requests get a prompt 503 instead of sitting out their timeout.
            for request, future in list(self._waiting.items()):
                self.scheduler.remove(request)
                if not future.done():
                    future.set_exception(EngineUnavailable(self.name))
            self._waiting.clear()
        self._dispatch()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def _abandon(self, request: QueuedRequest) -> None:
        """Take a request that gave up out of the queue (if dispatch has not already)."""
        if self._waiting.pop(request, None) is not None:
            self.scheduler.remove(request)

    def _dispatch(self) -> None:
        if self.state is not EngineState.UP:
            return
        now = self._clock()
        while self.inflight < self.capacity and self._waiting:
            request = self.scheduler.pop(now)
            if request is None:
                break
            future = self._waiting.pop(request, None)
            if future is None or future.done():
                # Its waiter gave up this very tick: undo the charge pop() made.
                self.scheduler.complete(request, 0.0, now)
                continue
            self.inflight += 1
            future.set_result(None)


def _admitted(future: asyncio.Future[None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None
