"""vLLM's scheduler with isolated prefills, for a managed vLLM with ``inject_priority``:
``--scheduler-cls fairlane.engines.vllm_scheduler.isolated_prefills`` (or
``isolated_prefill_steps``).

Under ``--scheduling-policy priority`` vLLM fills each step's token budget: the best
waiting prompt first, then worse ones in what is left. So a light tenant's prompt
(Fairlane gives it the best priority) is prefilled beside the prompts of a tenant over
its share, and its first token waits for theirs. This scheduler holds those back for the
step: while a better prompt waits with a sequence slot free, or is part-way through its
prefill, no worse prompt is started or continued ("better" and "worse" by priority
level: ``fairlane.engines.priority_levels``). ``isolated_prefills`` still runs every
decode; ``isolated_prefill_steps`` holds the worse decodes back too, so the better
prompt's step carries nothing of a worse priority (the running batch of a tenant over
its share waits one step; its first token comes sooner again, at the cost of one step's
fixed overhead to the rest). If a step that held work back got none of the better
prompts in (no room in the KV cache, say), the next step holds nothing back, so a prompt
that cannot run stalls the others for one step at most. Running requests are held only
while the KV cache has room for everything the step may ask of the others: vLLM chooses
a preemption's victim among the running requests it sees, and with the worse ones held
out of sight that would be a better one. The simulator models both
(``fairlane sim --isolate-prefills prompts|step``).

Where the supervisor sets ``FAIRLANE_ANNOUNCEMENTS`` (host:port), the scheduler also
listens there for Fairlane's word of each request it admits (``announcements``): while
a better prompt is on its way, with a slot free for it, no worse prompt is started or
continued, so the step in progress when it arrives is decodes, not a worse prefill.
Where it sets ``FAIRLANE_HEAVY_PREFILL_TOKENS`` (``heavy_prefills``), a step whose
prompts are all of a worse level than one that arrived lately gets the running decodes'
tokens plus that cap as its budget, so the step a better prompt arrives into is short.

vLLM's scheduler is not a public interface, so this touches little of it: ``running``,
``waiting``, ``policy``, ``max_num_running_reqs``, the KV cache's free blocks, the
step's token budget and the requests' ``priority``, ``status`` and token counts;
anything else is vLLM's own ``schedule``. Inside the engine's process it imports vLLM
and two small modules of this package (priority levels, announcements), nothing else.
The names above are factories, not classes: vLLM calls the configured name with the
scheduler's arguments, and the base must be ``AsyncScheduler`` under async scheduling
(vLLM's default on GPUs) and ``Scheduler`` without. A decode held back under async
scheduling takes vLLM's path for running requests left out of a step (their tokens are
sent again when they come back).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from fairlane.engines.announcements import AnnouncementSocket, ExpectedPrompts, address_from_env
from fairlane.engines.heavy_prefills import RecentLevels, cap_from_env, heavy_step_budget
from fairlane.engines.priority_levels import priority_level

# A child of vLLM's logger, whose handler and level vLLM sets up in its engine process,
# where this runs: a logger of our own would print nothing there.
log = logging.getLogger(f"vllm.{__name__}")

# What a better prompt's step leaves out: worse prompts, or all worse work.
Isolation = Literal["prompts", "step"]

# The waiting statuses vLLM can schedule; others wait for a grammar, remote KV, input.
_SCHEDULABLE = frozenset({"WAITING", "PREEMPTED"})
# vLLM's caps on admissions into the running batch (max_num_active_reqs: newer vLLMs).
_RUNNING_CAPS = ("max_num_running_reqs", "max_num_active_reqs")
# How often the engine's log says what announcements it heard, and how early.
SUMMARY_INTERVAL_S = 60.0


class EngineRequest(Protocol):
    """What the hold reads of a ``vllm.v1.request.Request``."""

    request_id: str
    priority: int
    num_computed_tokens: int
    num_prompt_tokens: int

    @property
    def status(self) -> Any: ...


@dataclass
class Hold:
    """The prompts that wait this step, and the better ones they wait for."""

    bar: int | None = None  # the priority level a prompt needs to be prefilled this step
    running: list[EngineRequest] = field(default_factory=list)
    waiting: list[EngineRequest] = field(default_factory=list)
    better: list[EngineRequest] = field(default_factory=list)
    announced: bool = False  # the bar is a prompt on its way, not one in the engine


def plan_hold(
    running: Sequence[EngineRequest],
    waiting: Iterable[EngineRequest],
    slot_free: bool,
    isolation: Isolation = "prompts",
    expected: int | None = None,
) -> Hold:
    """What to hold back: the requests of a worse priority level than the best prompt
    that is part-way through its prefill, or waiting for one with a slot free; of the
    running ones, those still prefilling (``prompts``) or all (``step``). ``expected``:
    the best level announced and not yet arrived (``announcements``); with a slot free
    for it, worse prompts wait for it too, but decodes run until it is here."""
    waiting = list(waiting)
    prefilling = [r for r in running if r.num_computed_tokens < r.num_prompt_tokens]
    ready = [r for r in waiting if _status_name(r) in _SCHEDULABLE] if slot_free else []
    pending = prefilling + ready
    bar = min((priority_level(r.priority) for r in pending), default=None)
    announced = slot_free and expected is not None and (bar is None or expected < bar)
    if announced:
        bar, isolation = expected, "prompts"
    if bar is None:
        return Hold()
    candidates = prefilling if isolation == "prompts" else running
    return Hold(
        bar,
        running=[r for r in candidates if priority_level(r.priority) > bar],
        waiting=[r for r in waiting if priority_level(r.priority) > bar],
        better=[r for r in pending if priority_level(r.priority) <= bar],
        announced=announced,
    )


def step_fits(
    free_blocks: int, to_compute: Iterable[int], token_budget: int, block_size: int, lookahead: int
) -> bool:
    """Whether running requests with ``to_compute`` tokens each still to compute can get
    every KV block a step may ask of them without a preemption: each computes at least
    one token (a decode) and at most the budget, plus ``lookahead`` speculative slots,
    and n more tokens never take more than ceil(n / block_size) new blocks."""
    need = sum(
        -(-(min(max(tokens, 1), token_budget) + lookahead) // block_size) for tokens in to_compute
    )
    return free_blocks >= need


def _status_name(request: EngineRequest) -> str:
    return str(getattr(request.status, "name", request.status))


def isolated_prefills(**kwargs: Any) -> Any:
    """vLLM's scheduler for this configuration, holding worse prompts back as above."""
    return _scheduler(kwargs, "prompts")


def isolated_prefill_steps(**kwargs: Any) -> Any:
    """vLLM's scheduler for this configuration, holding all worse work back as above."""
    return _scheduler(kwargs, "step")


SCHEDULER_CLS: dict[Isolation, str] = {
    "prompts": f"{__name__}.{isolated_prefills.__name__}",
    "step": f"{__name__}.{isolated_prefill_steps.__name__}",
}


def _listen_for_announcements() -> AnnouncementSocket | None:
    """Fairlane's announcements, where the supervisor asked for them; a port already
    taken (a second engine core of a data-parallel vLLM, say) costs only them."""
    address = address_from_env()
    if address is None:
        return None
    try:
        listening = AnnouncementSocket(*address)
    except OSError as exc:
        log.warning("not listening for Fairlane's announcements on %s:%d: %s", *address, exc)
        return None
    log.info("listening for Fairlane's announcements on %s:%d", *address)
    return listening


def _scheduler(kwargs: dict[str, Any], isolation: Isolation) -> Any:
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler

    asynchronous = kwargs["vllm_config"].scheduler_config.async_scheduling
    return _isolating(AsyncScheduler if asynchronous else Scheduler, isolation)(**kwargs)


@functools.cache
def _isolating(base: type, isolation: Isolation) -> type:
    from vllm.v1.core.sched.request_queue import SchedulingPolicy

    class IsolatedPrefills(base):  # type: ignore[valid-type,misc]
        running: list[Any]  # vLLM's, set in its __init__
        _held_in_vain = False

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._expected = ExpectedPrompts(_listen_for_announcements())
            self._summary_due = time.monotonic() + SUMMARY_INTERVAL_S
            self._summarised = 0  # announcements counted in the last summary
            self._heavy_cap = cap_from_env()
            self._recent = RecentLevels()
            if self._heavy_cap is not None:
                log.info("Fairlane caps worse levels' prefill at %d tokens a step", self._heavy_cap)

        def add_request(self, request: Any) -> None:
            new = request.request_id not in self.requests  # not a streamed input's next part
            super().add_request(request)
            if new:
                now = time.monotonic()
                self._expected.arrived(request.priority, now)
                self._recent.saw(priority_level(request.priority), now)

        def schedule(self, *args: Any, **kwargs: Any) -> Any:
            if self.policy != SchedulingPolicy.PRIORITY or self._held_in_vain:
                self._held_in_vain = False
                return super().schedule(*args, **kwargs)
            slot_free = len(self.running) < self.max_num_running_reqs
            now = time.monotonic()
            expected = self._expected.best(now)
            if now >= self._summary_due:
                self._summarise_announcements(now)
            hold = plan_hold(self.running, self.waiting, slot_free, isolation, expected)
            if hold.running and not self._fits_without_preemption(hold):
                # vLLM preempts the worst of the running requests it sees; with the
                # worse ones out of sight that would be a better one. Hold prompts only.
                hold.running = []
            limits = self._limits(hold, now)
            if not (hold.running or hold.waiting or limits):
                return super().schedule(*args, **kwargs)
            saved = {name: getattr(self, name) for name in limits}
            self._take_out(hold, limits)
            try:
                output = super().schedule(*args, **kwargs)
            finally:
                self._put_back(hold, saved)
            scheduled = output.num_scheduled_tokens
            held = bool(hold.running or hold.waiting) and not hold.announced
            self._held_in_vain = held and not any(r.request_id in scheduled for r in hold.better)
            return output

        def _summarise_announcements(self, now: float) -> None:
            # The operator's view of the lead announcements have on this engine.
            self._summary_due = now + SUMMARY_INTERVAL_S
            announced = self._expected.announced
            if announced != self._summarised:
                self._summarised = announced
                log.info("Fairlane's announcements so far: %s", self._expected.summary())

        def _fits_without_preemption(self, hold: Hold) -> bool:
            held = {id(r) for r in hold.running}
            to_compute = [
                r.num_tokens - r.num_computed_tokens for r in self.running if id(r) not in held
            ]
            blocks = self.kv_cache_manager.block_pool.get_num_free_blocks()
            groups = self.kv_cache_manager.num_kv_cache_groups  # each takes its own blocks
            budget = self.max_num_scheduled_tokens
            return step_fits(
                blocks // groups, to_compute, budget, self.block_size, self.num_lookahead_tokens
            )

        def _limits(self, hold: Hold, now: float) -> dict[str, int]:
            """The step's lowered limits. Held running requests keep their slots: lower
            the caps, or vLLM would admit as many new requests as it had taken out. A
            step of heavy prompts only gets the decodes' tokens plus the cap (running
            prefills stand after the decodes, newest last, so they do not take them)."""
            limits = {
                name: getattr(self, name) - len(hold.running)
                for name in _RUNNING_CAPS
                if hold.running and hasattr(self, name)
            }
            if self._heavy_cap is None or hold.announced:
                return limits
            held = {id(r) for r in hold.running}
            decodes = sum(
                1 + self.num_lookahead_tokens
                for r in self.running
                if id(r) not in held and r.num_computed_tokens >= r.num_prompt_tokens
            )
            best = self._recent.best(now)
            budget = heavy_step_budget(
                self.max_num_scheduled_tokens, self._heavy_cap, hold.bar, best, decodes
            )
            return limits if budget is None else limits | {"max_num_scheduled_tokens": budget}

        def _take_out(self, hold: Hold, limits: dict[str, int]) -> None:
            held = {id(r) for r in hold.running}
            self.running = [r for r in self.running if id(r) not in held]
            for name, limit in limits.items():
                setattr(self, name, limit)
            self.waiting.remove_requests(hold.waiting)

        def _put_back(self, hold: Hold, saved: dict[str, int]) -> None:
            # At the end of the batch: vLLM's priority policy picks preemption victims
            # by (priority, arrival), not by position.
            self.running.extend(hold.running)
            for name, value in saved.items():
                setattr(self, name, value)
            for request in hold.waiting:
                self.waiting.add_request(request)

    name = f"IsolatedPrefill{'Steps' if isolation == 'step' else 's'}{base.__name__}"
    IsolatedPrefills.__name__ = IsolatedPrefills.__qualname__ = name
    return IsolatedPrefills
