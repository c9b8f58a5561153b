"""The continuous-batching core of the simulator, modelled on vLLM v1's scheduler.

Each request has ``num_tokens`` known tokens (prompt + generated so far) and
``computed`` tokens whose KV is in the cache. Every step schedules, per request, the
tokens still to compute (capped by the step's token budget, which is chunked prefill);
when a request's computed tokens catch up with its known tokens the step produces its
next token. So a fresh request prefills its prompt (maybe over several steps), emits its
first token at the end of the step that completes the prompt, then decodes one token per
step.

Scheduling follows vLLM: running requests first, oldest first; when the KV cache cannot
hold a decode's next token the newest running request is preempted (recompute: its KV is
dropped and it goes back to the front of the waiting queue, to prefill prompt + output
again). Waiting requests are admitted strictly FCFS while there is a free sequence slot,
token budget and room in the KV cache for their whole prompt plus a small reserve; none
are admitted in a step that preempted. With ``scheduling_policy="priority"`` (vLLM's
``--scheduling-policy priority``) the waiting queue is ordered by (priority, arrival),
lower first, and the victim of a preemption is the running request with the largest
(priority, arrival) instead of the newest.

Time is simulated with ``asyncio.sleep``: a step lasts ``preset.step_ms(...)``, measured
from the previous step's planned end so the loop's own CPU work does not stretch it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections import deque
from typing import Literal

from .presets import SimPreset
from .request import FinishReason, SimRequest
from .stats import EngineStats

__all__ = ["EngineOverloaded", "FinishReason", "SchedulingPolicy", "SimEngine", "SimRequest"]

SchedulingPolicy = Literal["fcfs", "priority"]

# The idle loop re-checks this often even without a wakeup; costs nothing measurable.
_IDLE_RECHECK_S = 30.0
# Lag the loop absorbs by shortening later steps; beyond it, it restarts the clock
# rather than emit a burst of zero-length steps after a long stall.
_MAX_CATCH_UP_S = 0.02
# Like vLLM's watermark: keep 1% of the cache free when admitting, so admitted requests
# can decode a while before anything must be preempted.
_KV_RESERVE_FRACTION = 0.01
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
        self._running: list[SimRequest] = []
        self._waiting: deque[SimRequest] = deque()
        self._arriving = 0  # submitted, still in the API-overhead delay
        self._kv_used = 0
        self._kv_reserve = int(preset.kv_cache_tokens * _KV_RESERVE_FRACTION)
        self._abort_pending = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timer_lag = 0.0

    @property
    def num_running(self) -> int:
        return len(self._running)

    @property
    def num_waiting(self) -> int:
        return len(self._waiting)

    @property
    def kv_usage(self) -> float:
        """Fraction (0-1) of the KV cache held by running requests."""
        return self._kv_used / self.preset.kv_cache_tokens

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
        for req in (*self._running, *self._waiting):
            req._close("abort")
        self.stats.requests_aborted += len(self._running) + len(self._waiting)
        self._running.clear()
        self._waiting.clear()
        self._kv_used = 0

    def submit(self, prompt_tokens: int, max_tokens: int, priority: int = 0) -> SimRequest:
        """Queue a generation of exactly ``max_tokens`` tokens after a prompt;
        ``priority`` orders the waiting queue under the priority policy (lower first).

        Raises ValueError for an invalid or too long request, EngineOverloaded when the
        queue is full and RuntimeError when the engine is not running.
        """
        if prompt_tokens < 1 or max_tokens < 1:
            raise ValueError("prompt_tokens and max_tokens must be at least 1")
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
        in_engine = self._arriving + len(self._waiting) + len(self._running)
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

    def _abort_requested(self) -> None:
        self._abort_pending = True

    def _enqueue(self, req: SimRequest) -> None:
        self._arriving -= 1
        if req._aborted or self._task is None:
            req._close("abort")
            self.stats.requests_aborted += 1
            return
        self._wait(req)
        self._wakeup.set()

    def _wait(self, req: SimRequest) -> None:
        """Into the waiting queue at its place: by (priority, arrival), which under FCFS
        is the end (a preempted request keeps its arrival ticket)."""
        waiting = self._waiting
        if not waiting or waiting[-1].order < req.order:
            waiting.append(req)  # the common case, O(1)
        else:
            waiting.insert(bisect.bisect(waiting, req.order, key=_order), req)

    def _drop_aborted(self) -> None:
        self._abort_pending = False
        gone = [r for r in (*self._running, *self._waiting) if r._aborted]
        for req in gone:
            self._kv_used -= req._kv
            req._kv = 0
            req._close("abort")
        self.stats.requests_aborted += len(gone)
        self._running = [r for r in self._running if not r._aborted]
        self._waiting = deque(r for r in self._waiting if not r._aborted)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        deadline: float | None = None
        while True:
            if self._abort_pending:
                self._drop_aborted()
            if not self._running and not self._waiting:
                deadline = None
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), _IDLE_RECHECK_S)
                continue
            now = loop.time()
            start = deadline if deadline is not None and now - deadline < _MAX_CATCH_UP_S else now
            scheduled, step_s = self._schedule()
            deadline = start + step_s
            await self._sleep_until(deadline - self._timer_lag, loop)
            self._finish_step(scheduled, step_s, loop.time())

    async def _sleep_until(self, wake: float, loop: asyncio.AbstractEventLoop) -> None:
        delay = wake - loop.time()
        if delay <= 0:
            await asyncio.sleep(0)  # behind schedule: still let the handlers run
            return
        await asyncio.sleep(delay)
        lag = self._timer_lag + _TIMER_LAG_ALPHA * (loop.time() - wake - self._timer_lag)
        self._timer_lag = min(_MAX_TIMER_LAG_S, max(0.0, lag))

    def _schedule(self) -> tuple[list[SimRequest], float]:
        """Pick this step's batch and reserve its KV; returns it and the step duration."""
        preset = self.preset
        budget = preset.max_num_batched_tokens
        running = self._running
        scheduled: list[SimRequest] = []
        prefill_tokens = 0
        preemptions_before = self.stats.preemptions
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            num_tokens = req.prompt_tokens + req.generated
            new = min(num_tokens - req._computed, budget)
            grow = req._computed + new - req._kv  # > 0 only for a decode's next token
            if grow > 0:
                if not self._make_room(grow, req):
                    break  # req itself was preempted; it was the last running request
                req._kv += grow
                self._kv_used += grow
            if req.generated == 0 or req._computed + 1 < num_tokens:
                prefill_tokens += new
            req._new = new
            budget -= new
            scheduled.append(req)
            i += 1
        if self.stats.preemptions == preemptions_before:
            waiting = self._waiting
            while waiting and budget > 0 and len(running) < preset.max_num_seqs:
                req = waiting[0]
                need = req.prompt_tokens + req.generated
                # Alone, a request always fits (max_model_len <= KV size); never deadlock.
                if running and self._kv_used + need + self._kv_reserve > preset.kv_cache_tokens:
                    break
                waiting.popleft()
                req._kv = need
                self._kv_used += need
                req._new = min(need, budget)
                budget -= req._new
                prefill_tokens += req._new
                running.append(req)
                scheduled.append(req)
        step_ms = preset.step_ms(len(scheduled), prefill_tokens, self._kv_used)
        return scheduled, step_ms / 1000.0

    def _make_room(self, tokens: int, req: SimRequest) -> bool:
        """Preempt newest running requests until ``tokens`` more fit in the KV cache;
        False when ``req`` itself had to be preempted."""
        while self._kv_used + tokens > self.preset.kv_cache_tokens:
            priority = self.scheduling_policy == "priority"
            if priority:
                victim = max(self._running, key=_order)
                self._running.remove(victim)
            else:
                victim = self._running.pop()
            self._kv_used -= victim._kv
            victim._kv = 0
            victim._computed = 0
            if priority:
                self._wait(victim)
            else:
                self._waiting.appendleft(victim)  # vLLM's FCFS: back to the front
            self.stats.preemptions += 1
            if victim is req:
                return False
        return True

    def _finish_step(self, scheduled: list[SimRequest], step_s: float, now: float) -> None:
        stats = self.stats
        generated = 0
        finished = False
        for req in scheduled:
            req._computed += req._new
            if req._computed < req.prompt_tokens + req.generated:
                continue  # a prefill chunk that did not complete the prompt
            req.generated += 1
            generated += 1
            if req.first_token_at is None:
                req.first_token_at = now
                stats.ttft.observe(now - req.arrival)
                stats.prompt_tokens += req.prompt_tokens
            if req.generated == req.max_tokens:
                self._kv_used -= req._kv
                req._kv = 0
                stats.e2e.observe(now - req.arrival)
                stats.requests_finished += 1
                finished = True
                req._close("length")
            else:
                req._wake()
        if finished:
            self._running = [r for r in self._running if r.finish_reason is None]
        stats.generation_tokens += generated
        stats.steps += 1
        stats.step_seconds += step_s


def _order(req: SimRequest) -> tuple[int, int]:
    return req.order
