"""The simulator's scheduler, modelled on vLLM v1's: which requests each step runs.

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

``isolate_prefills`` (with the priority policy) models Fairlane's vLLM scheduler
(``fairlane.engines.vllm_scheduler``): while a prompt of a better priority level
(``priority_level``: Fairlane's priorities are a level and a rank under it) waits for its
prefill with a sequence slot free, or is part-way through it, a step runs no prompt of a
worse level (``prompts``: their decodes run as usual), or nothing of a worse level at all
(``step``: their decodes wait too). So a light tenant's prompt does not share its
step with the leftover budget filled by the prompts of a tenant over its share, and with
``step`` not with that tenant's running batch either; the held work runs in the next
step. A prompt announced by Fairlane (``fairlane.engines.announcements``) and not yet
arrived holds worse prompts back the same way, with a slot free for it, but not
decodes. If such a step got none of the better prompt's tokens in (the KV cache was full,
say), the next step holds nothing back, so a prompt that cannot run never stalls the
others for more than a step; and running requests are held only while the cache has
room for every running decode's next token, so a preemption still takes the worst.

With ``heavy_prefill_tokens`` too, while a request of a better level has arrived lately
(``recent_best``, which the engine sets), the prompt tokens a step computes for worse
levels stop at that cap (``fairlane.engines.heavy_prefills``; vLLM's scheduler
approximates it with the step's budget).

A step's attention cost counts the context of the requests it runs, not of those it
holds back.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Literal

from ..heavy_prefills import HeavyAllowance
from ..priority_levels import priority_level
from ..vllm_scheduler import Isolation
from .presets import SimPreset
from .request import SimRequest
from .stats import EngineStats

SchedulingPolicy = Literal["fcfs", "priority"]

# Like vLLM's watermark: keep 1% of the cache free when admitting, so admitted requests
# can decode a while before anything must be preempted.
_KV_RESERVE_FRACTION = 0.01


class BatchScheduler:
    """The running batch, the waiting queue and the KV cache they share. Synchronous:
    the engine's loop calls ``schedule``, sleeps the step's duration, then calls
    ``finish_step``."""

    def __init__(
        self,
        preset: SimPreset,
        scheduling_policy: SchedulingPolicy,
        stats: EngineStats,
        isolate_prefills: Isolation | None = None,
        heavy_prefill_tokens: int | None = None,
    ) -> None:
        self.preset = preset
        self.scheduling_policy = scheduling_policy
        self.isolate_prefills = isolate_prefills if scheduling_policy == "priority" else None
        self._hold_decodes = self.isolate_prefills == "step"
        self._held_in_vain = False  # the last step held work back and ran no better prompt
        # The best priority level announced and not yet arrived (the engine sets it before
        # each step).
        self.expected: int | None = None
        # With isolation: the most prompt tokens a step prefills of a worse level than
        # ``recent_best``, the best level arrived lately (the engine sets it before each
        # step; fairlane.engines.heavy_prefills).
        self.heavy_prefill_tokens = heavy_prefill_tokens if self.isolate_prefills else None
        self.recent_best: int | None = None
        self.stats = stats
        self.running: list[SimRequest] = []
        self.waiting: deque[SimRequest] = deque()
        self.kv_used = 0
        self._kv_reserve = int(preset.kv_cache_tokens * _KV_RESERVE_FRACTION)

    def wait(self, req: SimRequest) -> None:
        """Into the waiting queue at its place: by (priority, arrival), which under FCFS
        is the end (a preempted request keeps its arrival ticket)."""
        waiting = self.waiting
        if not waiting or waiting[-1].order < req.order:
            waiting.append(req)  # the common case, O(1)
        else:
            waiting.insert(bisect.bisect(waiting, req.order, key=_order), req)

    def drop_aborted(self) -> None:
        gone = [r for r in (*self.running, *self.waiting) if r._aborted]
        for req in gone:
            self.kv_used -= req._kv
            req._kv = 0
            req._close("abort")
        self.stats.requests_aborted += len(gone)
        self.running = [r for r in self.running if not r._aborted]
        self.waiting = deque(r for r in self.waiting if not r._aborted)

    def abort_all(self) -> None:
        """End every unfinished request with ``finish_reason="abort"``."""
        for req in (*self.running, *self.waiting):
            req._close("abort")
        self.stats.requests_aborted += len(self.running) + len(self.waiting)
        self.running.clear()
        self.waiting.clear()
        self.kv_used = 0

    def schedule(self) -> tuple[list[SimRequest], float]:
        """Pick this step's batch and reserve its KV; returns it and the step duration."""
        preset = self.preset
        budget = preset.max_num_batched_tokens
        running = self.running
        scheduled: list[SimRequest] = []
        preemptions_before = self.stats.preemptions
        bar, announced = self._prefill_bar()
        # As Fairlane's vLLM scheduler: running requests are held only while every
        # decode's next token fits, for vLLM would preempt among the ones it sees.
        fits = self.kv_used + len(running) <= preset.kv_cache_tokens
        running_bar = bar if fits else None
        heavy = HeavyAllowance(self.heavy_prefill_tokens, self.recent_best)
        held = False
        i = 0
        while i < len(running) and budget > 0:
            req = running[i]
            if (
                running_bar is not None
                and _level(req) > running_bar
                and ((self._hold_decodes and not announced) or _prefilling(req))
            ):
                i += 1  # worse work waits for a later step
                held = True
                continue
            num_tokens = req.prompt_tokens + req.generated
            new = heavy.take(_level(req), _prefilling(req), min(num_tokens - req._computed, budget))
            if new == 0:
                i += 1  # a heavy prompt's chunk, over the cap: the next step
                continue
            grow = req._computed + new - req._kv  # > 0 only for a decode's next token
            if grow > 0:
                victims = self._make_room(grow, req)
                if victims:
                    for victim in victims:
                        if victim in scheduled:  # as vLLM does: out of this step too
                            scheduled.remove(victim)
                            budget += victim._new
                    if req not in running:
                        break  # req itself was preempted; it was the last running request
                    i = running.index(req)  # victims may have stood before it
                req._kv += grow
                self.kv_used += grow
            req._new = new
            budget -= new
            scheduled.append(req)
            i += 1
        if self.stats.preemptions == preemptions_before:
            waiting = self.waiting
            while waiting and budget > 0 and len(running) < preset.max_num_seqs:
                req = waiting[0]
                if bar is not None and _level(req) > bar:
                    held = True
                    break  # sorted by priority: every request behind it is worse too
                need = req.prompt_tokens + req.generated
                # Alone, a request always fits (max_model_len <= KV size); never deadlock.
                if running and self.kv_used + need + self._kv_reserve > preset.kv_cache_tokens:
                    break
                new = heavy.take(_level(req), True, min(need, budget))
                if new == 0:
                    break  # over the cap; sorted by priority: the rest is as heavy
                waiting.popleft()
                req._kv = need
                self.kv_used += need
                req._new = new
                budget -= req._new
                running.append(req)
                scheduled.append(req)
        if held and bar is not None and not announced:
            self._held_in_vain = not any(_level(r) <= bar and _prefilling(r) for r in scheduled)
        prefill_tokens = sum(r._new for r in scheduled if _prefilling(r))
        context_tokens = sum(r._kv for r in scheduled)
        step_ms = preset.step_ms(len(scheduled), prefill_tokens, context_tokens)
        return scheduled, step_ms / 1000.0

    def _prefill_bar(self) -> tuple[int | None, bool]:
        """With ``isolate_prefills``: the priority level a request needs to run in this
        step, that of the best prompt waiting with a slot free or part-way through its
        prefill, or on its way (``expected``: then decodes run); None when nothing is
        held back. And whether that level is one on its way."""
        if not self.isolate_prefills or self._held_in_vain:
            self._held_in_vain = False
            return None, False
        pending = [r.order[0] for r in self.running if _prefilling(r)]
        slot_free = len(self.running) < self.preset.max_num_seqs
        if self.waiting and slot_free:
            pending.append(self.waiting[0].order[0])
        bar = min(map(priority_level, pending), default=None)
        expected = self.expected
        if slot_free and expected is not None and (bar is None or expected < bar):
            return expected, True
        return bar, False

    def _make_room(self, tokens: int, req: SimRequest) -> list[SimRequest]:
        """Preempt running requests (the newest; under the priority policy the worst)
        until ``tokens`` more fit in the KV cache or ``req`` itself goes; returns them."""
        victims: list[SimRequest] = []
        while self.kv_used + tokens > self.preset.kv_cache_tokens:
            priority = self.scheduling_policy == "priority"
            if priority:
                victim = max(self.running, key=_order)
                self.running.remove(victim)
            else:
                victim = self.running.pop()
            self.kv_used -= victim._kv
            victim._kv = 0
            victim._computed = 0
            if priority:
                self.wait(victim)
            else:
                self.waiting.appendleft(victim)  # vLLM's FCFS: back to the front
            self.stats.preemptions += 1
            victims.append(victim)
            if victim is req:
                break
        return victims

    def finish_step(self, scheduled: list[SimRequest], step_s: float, now: float) -> None:
        stats = self.stats
        generated = 0
        finished = False
        for req in scheduled:
            req._computed += req._new
            if req._computed < req.prompt_tokens + req.generated:
                continue  # a prefill chunk that did not complete the prompt
            if req.max_tokens == 0:  # pooling: the prompt's pass was the whole request
                stats.prompt_tokens += req.prompt_tokens
                self._finish(req, now)
                finished = True
                continue
            req.generated += 1
            generated += 1
            if req.first_token_at is None:
                req.first_token_at = now
                stats.ttft.observe(now - req.arrival)
                stats.prompt_tokens += req.prompt_tokens
            if req.generated == req.max_tokens:
                self._finish(req, now)
                finished = True
            else:
                req._wake()
        if finished:
            self.running = [r for r in self.running if r.finish_reason is None]
        stats.generation_tokens += generated
        stats.steps += 1
        stats.step_seconds += step_s

    def _finish(self, req: SimRequest, now: float) -> None:
        self.kv_used -= req._kv
        req._kv = 0
        self.stats.e2e.observe(now - req.arrival)
        self.stats.requests_finished += 1
        req._close("length")


def _order(req: SimRequest) -> tuple[int, int]:
    return req.order


def _level(req: SimRequest) -> int:
    return priority_level(req.order[0])


def _prefilling(req: SimRequest) -> bool:
    """Has tokens to compute before its next one: a prompt (or, after a preemption, a
    prompt and output) not yet wholly in the KV cache."""
    return req._computed + (1 if req.generated else 0) < req.prompt_tokens + req.generated
