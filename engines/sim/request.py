"""A request inside the simulated engine, and how its tokens reach the consumer.

The engine (``engine.py``, ``scheduler.py``) owns the underscore fields; consumers read
the public ones, iterate the request for new tokens and call ``abort()``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

FinishReason = Literal["length", "abort"]


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError("the simulated engine made no progress on this request"))


class SimRequest:
    """One generation in the engine. Iterate it (``async for n in req``) to get the number
    of tokens generated since the previous iteration, 1 or more when the consumer fell
    behind; iteration ends when the request finishes (``finish_reason``)."""

    __slots__ = (
        "_aborted",
        "_computed",
        "_delivered",
        "_kv",
        "_loop",
        "_new",
        "_on_abort",
        "_stall_timeout_s",
        "_waiter",
        "arrival",
        "finish_reason",
        "first_token_at",
        "generated",
        "max_tokens",
        "order",
        "prompt_tokens",
    )

    def __init__(
        self,
        prompt_tokens: int,
        max_tokens: int,
        loop: asyncio.AbstractEventLoop,
        on_abort: Callable[[], None],
        stall_timeout_s: float,
    ) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.arrival = loop.time()
        self.order = (0, 0)  # (priority, arrival ticket): the engine's waiting-queue key
        self.generated = 0
        self.first_token_at: float | None = None
        self.finish_reason: FinishReason | None = None
        self._loop = loop
        self._on_abort = on_abort
        self._stall_timeout_s = stall_timeout_s
        self._aborted = False
        self._computed = 0  # tokens whose KV is computed
        self._kv = 0  # KV slots held (the whole prompt is reserved at admission)
        self._new = 0  # tokens scheduled in the current step
        self._delivered = 0
        self._waiter: asyncio.Future[None] | None = None

    def abort(self) -> None:
        """The client is gone: the engine drops the request at its next step."""
        if self.finish_reason is None and not self._aborted:
            self._aborted = True
            self._on_abort()

    def __aiter__(self) -> SimRequest:
        return self

    async def __anext__(self) -> int:
        while self._delivered == self.generated:
            if self.finish_reason is not None:
                raise StopAsyncIteration
            fut = self._loop.create_future()
            self._waiter = fut
            timer = self._loop.call_later(self._stall_timeout_s, _expire, fut)
            try:
                await fut
            finally:
                timer.cancel()
                self._waiter = None
        n = self.generated - self._delivered
        self._delivered = self.generated
        return n

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _close(self, reason: FinishReason) -> None:
        self.finish_reason = reason
        self._wake()
