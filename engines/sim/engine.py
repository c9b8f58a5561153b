"""The simulated engine: requests in, steps of a vLLM v1-like batch, tokens out.

A request enters after the API's overhead delay; which requests each step runs, and what
it produces, is the scheduler's (``scheduler.py``).

Time is simulated with ``asyncio.sleep``: a step lasts ``preset.step_ms(...)``, measured
from the previous step's planned end so the loop's own CPU work does not stretch it.
"""

from __future__ import annotations

import asyncio
import contextlib

from ..announcements import AnnouncementSocket, ExpectedPrompts
from ..heavy_prefills import RecentLevels
from ..priority_levels import priority_level
from ..vllm_scheduler import Isolation
from .presets import SimPreset
from .request import FinishReason, SimRequest
from .scheduler import BatchScheduler, SchedulingPolicy
from .stats import EngineStats

__all__ = ["EngineOverloaded", "FinishReason", "SimEngine", "SimRequest"]

# The idle loop re-checks this often even without a wakeup; costs nothing measurable.
_IDLE_RECHECK_S = 30.0
# Lag the loop absorbs by shortening later steps; beyond it, it restarts the clock
# rather than emit a burst of zero-length steps after a long stall.
_MAX_CATCH_UP_S = 0.02
_STOP_TIMEOUT_S = 5.0
# asyncio timers fire late: on Linux the selector rounds timeouts up to whole
# milliseconds, ~1 ms late on average. The engine learns that lateness (moving average,
# capped) and asks for its wake-ups that much early, so steps and the API delay last what
# the preset says on average, on any platform.
_TIMER_LAG_ALPHA = 0.2
_MAX_TIMER_LAG_S = 0.002


class EngineOverloaded(RuntimeError):
    """The waiting queue is at its bound (the server answers 503)."""


class SimEngine:
    """A model-less engine with vLLM's batching, KV-capacity and timing behaviour.

    ``max_waiting`` bounds the requests beyond a full batch (default 10 x max_num_seqs):
    ``submit`` raises EngineOverloaded once ``max_num_seqs + max_waiting`` are in the
    engine. ``stall_timeout_s`` fails a consumer that waits that long for one token,
    a guard against bugs, not a limit a healthy engine reaches.
    """

    def __init__(
        self,
        preset: SimPreset,
        max_waiting: int | None = None,
        stall_timeout_s: float = 600.0,
        scheduling_policy: SchedulingPolicy = "fcfs",
        isolate_prefills: Isolation | None = None,
        announcements: AnnouncementSocket | None = None,
        heavy_prefill_tokens: int | None = None,
    ) -> None:
        if preset.kv_cache_tokens < preset.max_model_len:
            # vLLM refuses to start in this case too: a max-length request could never run.
            raise ValueError(
                f"max_model_len ({preset.max_model_len}) is larger than the KV cache "
                f"({preset.kv_cache_tokens} tokens)"
            )
        self.preset = preset
        self.max_waiting = max_waiting if max_waiting is not None else 10 * preset.max_num_seqs
        self.scheduling_policy = scheduling_policy
        self._arrivals = 0  # ticket of the latest submission: the FCFS tie-break
        self.stats = EngineStats()
        self._stall_timeout_s = stall_timeout_s
        self._batch = BatchScheduler(
            preset, scheduling_policy, self.stats, isolate_prefills, heavy_prefill_tokens
        )
        self._recent = RecentLevels()
        # Requests Fairlane announced, not yet arrived.
        self.expected = ExpectedPrompts(announcements)
        self._arriving = 0  # submitted, still in the API-overhead delay
        self._abort_pending = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer_lag = 0.0

    @property
    def num_running(self) -> int:
        return len(self._batch.running)

    @property
    def num_waiting(self) -> int:
        return len(self._batch.waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction (0-1) of the KV cache held by running requests."""
        return self._batch.kv_used / self.preset.kv_cache_tokens

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        """Stop stepping and end every unfinished request with ``finish_reason="abort"``."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.wait([task], timeout=_STOP_TIMEOUT_S)
        self._batch.abort_all()

    def submit(self, prompt_tokens: int, max_tokens: int, priority: int = 0) -> SimRequest:
        """Queue a generation of exactly ``max_tokens`` tokens after a prompt (0: pooling,
        as for an embedding: the request ends with its prompt's prefill); ``priority``
        orders the waiting queue under the priority policy (lower first).

        Raises ValueError for an invalid or too long request, EngineOverloaded when the
        queue is full and RuntimeError when the engine is not running.
        """
        if prompt_tokens < 1 or max_tokens < 0:
            raise ValueError("prompt_tokens must be at least 1 and max_tokens at least 0")
        total = prompt_tokens + max_tokens
        if total > self.preset.max_model_len:
            raise ValueError(
                f"This model's maximum context length is {self.preset.max_model_len} tokens. "
                f"However, you requested {total} tokens ({prompt_tokens} in the messages, "
                f"{max_tokens} in the completion). Please reduce the length of the messages "
                "or completion."
            )
        if self._task is None:
            raise RuntimeError("the simulated engine is not running")
        # Bound everything in the engine, not just the waiting deque: requests still in
        # the API delay count too, or a burst on an idle engine could overrun it.
        in_engine = self._arriving + len(self._batch.waiting) + len(self._batch.running)
        if in_engine >= self.preset.max_num_seqs + self.max_waiting:
            raise EngineOverloaded(f"too many requests waiting ({self.max_waiting})")
        loop = asyncio.get_running_loop()
        req = SimRequest(
            prompt_tokens, max_tokens, loop, self._abort_requested, self._stall_timeout_s
        )
        self._arrivals += 1
        req.order = (priority if self.scheduling_policy == "priority" else 0, self._arrivals)
        self._arriving += 1
        delay = self.preset.api_overhead_ms / 1000.0 - self._timer_lag
        loop.call_later(max(0.0, delay), self._enqueue, req)
        return req

    def announce(self, priority: int) -> None:
        """Fairlane's word that a request of ``priority`` is on its way (what the
        announcement socket receives, for an engine used in-process)."""
        self.expected.expect(priority, asyncio.get_running_loop().time())

    def _abort_requested(self) -> None:
        self._abort_pending = True

    def _enqueue(self, req: SimRequest) -> None:
        self._arriving -= 1
        now = asyncio.get_running_loop().time()
        self.expected.arrived(req.order[0], now)
        self._recent.saw(priority_level(req.order[0]), now)
        if req._aborted or self._task is None:
            req._close("abort")
            self.stats.requests_aborted += 1
            return
        self._batch.wait(req)
        self._wakeup.set()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        batch = self._batch
        while True:
            if self._abort_pending:
                self._abort_pending = False
                batch.drop_aborted()
            if not batch.running and not batch.waiting:
                deadline = None
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), _IDLE_RECHECK_S)
                continue
            now = loop.time()
            batch.expected = self.expected.best(now)
            batch.recent_best = self._recent.best(now)
            start = deadline if deadline is not None and now - deadline < _MAX_CATCH_UP_S else now
            scheduled, step_s = batch.schedule()
            deadline = start + step_s
            await self._sleep_until(deadline - self._timer_lag, loop)
            batch.finish_step(scheduled, step_s, loop.time())

    async def _sleep_until(self, wake: float, loop: asyncio.AbstractEventLoop) -> None:
        delay = wake - loop.time()
        if delay <= 0:
            await asyncio.sleep(0)  # behind schedule: still let the handlers run
            return
        await asyncio.sleep(delay)
        lag = self._timer_lag + _TIMER_LAG_ALPHA * (loop.time() - wake - self._timer_lag)
        self._timer_lag = min(_MAX_TIMER_LAG_S, max(0.0, lag))
