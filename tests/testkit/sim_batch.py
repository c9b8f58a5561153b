"""The simulator's ``BatchScheduler`` stepped by hand, with a clock of its own: no event
loop timing, so a test reads exactly what each step scheduled."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools

from fairlane.engines.sim.presets import PRESETS
from fairlane.engines.sim.request import SimRequest
from fairlane.engines.sim.scheduler import BatchScheduler
from fairlane.engines.sim.stats import EngineStats
from fairlane.engines.vllm_scheduler import Isolation

# 8 sequences, 512 tokens a step, room in the KV cache for a few thousand tokens.
TINY = PRESETS["tiny"]


class SteppedBatch:
    """A ``BatchScheduler`` on the tiny preset (``preset`` overrides its fields) under
    the priority policy: ``step`` schedules and finishes one step and returns how many
    tokens each request got in it. Set ``batch.recent_best`` for the heavy-prefill cap."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        isolate: Isolation | None,
        heavy_prefill_tokens: int | None = None,
        **preset: int,
    ) -> None:
        self.batch = BatchScheduler(
            dataclasses.replace(TINY, **preset),
            "priority",
            EngineStats(),
            isolate,
            heavy_prefill_tokens,
        )
        self.loop = loop
        self.tickets = itertools.count(1)
        self.now = 0.0

    def submit(self, prompt_tokens: int, priority: int, max_tokens: int = 50) -> SimRequest:
        req = SimRequest(prompt_tokens, max_tokens, self.loop, lambda: None, 60.0)
        req.order = (priority, next(self.tickets))
        self.batch.wait(req)
        return req

    def step(self) -> dict[SimRequest, int]:
        scheduled, step_s = self.batch.schedule()
        got = {req: req._new for req in scheduled}
        self.now += step_s
        self.batch.finish_step(scheduled, step_s, self.now)
        return got
