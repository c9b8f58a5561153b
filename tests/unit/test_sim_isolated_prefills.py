"""The simulator's ``isolate_prefills``: no step prefills a worse priority's prompt beside
a better one's (``prompts``), nor runs anything of a worse priority (``step``). Drives
``BatchScheduler`` step by step, no event loop timing."""

from __future__ import annotations

import asyncio

import pytest

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.engines.sim.request import SimRequest
from fairlane.engines.sim.scheduler import BatchScheduler
from fairlane.engines.sim.stats import EngineStats
from fairlane.engines.vllm_scheduler import Isolation

from testkit.sim_batch import TINY, SteppedBatch

# Priorities as Fairlane gives them: levels 0 and 3, ranks under them that only order.
LIGHT, HEAVY = 2, 3 * PRIORITY_LEVEL_SPAN + 1


@pytest.fixture(params=["prompts", "step"])
def isolation(request: pytest.FixtureRequest) -> Isolation:
    """Either isolation: what holds for prompts holds for the whole step too."""
    mode: Isolation = request.param
    return mode


def prefilled(got: dict[SimRequest, int], req: SimRequest) -> int:
    return got.get(req, 0)


@pytest.mark.parametrize("isolate", [None, "prompts", "step"])
def test_a_light_prompt_is_isolated_from_worse_work(
    loop: asyncio.AbstractEventLoop, isolate: Isolation | None
) -> None:
    engine = SteppedBatch(loop, isolate)
    decoding = [engine.submit(50, HEAVY) for _ in range(3)]
    light_decoding = engine.submit(50, LIGHT)
    engine.step()  # their prompts: all four, or with isolation the light one first...
    engine.step()  # ...and the heavy ones in the step after
    assert all(req.generated >= 1 for req in (*decoding, light_decoding))
    heavy = engine.submit(200, HEAVY)
    light = engine.submit(200, LIGHT)
    got = engine.step()
    assert prefilled(got, light) == 200  # first, in one step
    assert got[light_decoding] == 1  # its own priority's decodes run beside it
    # Without isolation the heavy prompt fills the rest of the 512-token budget; the
    # heavy decodes run unless the whole step is isolated.
    assert prefilled(got, heavy) == (200 if isolate is None else 0)
    assert [prefilled(got, req) for req in decoding] == [0 if isolate == "step" else 1] * 3
    if isolate is not None:
        got = engine.step()
        assert prefilled(got, heavy) == 200  # the step after
        assert [prefilled(got, req) for req in decoding] == [1] * 3


def test_the_light_step_costs_only_what_it_runs(loop: asyncio.AbstractEventLoop) -> None:
    # The step's duration counts the requests it runs, their context included.
    engine = SteppedBatch(loop, isolate="step")
    for _ in range(6):
        engine.submit(50, HEAVY)
    engine.step()
    engine.submit(100, LIGHT)
    scheduled, step_s = engine.batch.schedule()
    assert [req._new for req in scheduled] == [100]
    assert step_s * 1000 == pytest.approx(TINY.step_ms(1, 100, 100))


def test_a_worse_prompt_part_way_through_waits_while_a_better_one_is_prefilled(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    engine = SteppedBatch(loop, isolation)
    heavy = engine.submit(1000, HEAVY)
    assert prefilled(engine.step(), heavy) == 512  # chunked: the whole budget
    light = engine.submit(700, LIGHT)
    got = engine.step()
    # The light prompt is also chunked (512 + 188): the heavy chunk waits both steps.
    assert (prefilled(got, light), prefilled(got, heavy)) == (512, 0)
    got = engine.step()
    assert (prefilled(got, light), prefilled(got, heavy)) == (188, 0)
    assert light.generated == 1
    got = engine.step()
    assert (prefilled(got, light), prefilled(got, heavy)) == (1, 488)


def test_equal_priorities_share_a_step(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    engine = SteppedBatch(loop, isolation)
    first, second = engine.submit(200, LIGHT), engine.submit(200, LIGHT)
    got = engine.step()
    assert (prefilled(got, first), prefilled(got, second)) == (200, 200)


def test_a_better_rank_goes_first_and_holds_nothing_of_its_level(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    """A light tenant's burst (ranks 3, 4...) and a quiet light tenant's prompt (rank 1):
    the quiet prompt is taken first, the burst's chunked prompt is not held for it."""
    engine = SteppedBatch(loop, isolation)
    chunked = engine.submit(600, LIGHT + 3)
    assert prefilled(engine.step(), chunked) == 512
    burst = engine.submit(300, LIGHT + 4)
    quiet = engine.submit(300, LIGHT + 1)
    got = engine.step()
    # Running first (vLLM's order): the chunk's 88; then the quiet prompt ahead of the
    # burst's earlier one, which gets what is left of the budget.
    assert (prefilled(got, chunked), prefilled(got, quiet), prefilled(got, burst)) == (
        88,
        300,
        124,
    )


def test_no_hold_for_a_better_prompt_that_has_no_slot(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    engine = SteppedBatch(loop, isolation, max_num_seqs=2)
    engine.submit(50, HEAVY)
    heavy = engine.submit(1000, HEAVY)
    engine.step()  # both slots taken; heavy is part-way through its prompt
    engine.submit(100, LIGHT)  # cannot start before a slot frees
    engine.batch.expected = 0  # nor could another one on its way
    assert prefilled(engine.step(), heavy) > 0


def test_a_better_prompt_that_cannot_run_holds_the_others_back_one_step_at_most(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    # The KV cache has room for the heavy requests but not for the light prompt too.
    engine = SteppedBatch(loop, isolation, kv_cache_tokens=2048)
    heavy = engine.submit(1200, HEAVY)
    assert prefilled(engine.step(), heavy) == 512
    engine.submit(900, LIGHT)
    assert prefilled(engine.step(), heavy) == 0  # held back: the light prompt did not fit
    assert prefilled(engine.step(), heavy) == 512  # ...once
    assert prefilled(engine.step(), heavy) == 0  # tried again, still no room


def test_without_the_priority_policy_nothing_is_held(loop: asyncio.AbstractEventLoop) -> None:
    batch = BatchScheduler(TINY, "fcfs", EngineStats(), isolate_prefills="step")
    assert batch.isolate_prefills is None


def test_a_preempted_request_leaves_the_step_it_was_scheduled_in(
    loop: asyncio.AbstractEventLoop,
) -> None:
    # Running order is admission order: the heavy request is scheduled first, then the
    # light one's next token finds the cache full and the heavy one is the victim.
    engine = SteppedBatch(loop, isolate=None, kv_cache_tokens=120)
    heavy = engine.submit(50, HEAVY)
    engine.step()
    light = engine.submit(60, LIGHT)
    for _ in range(20):
        got = engine.step()
        if engine.batch.stats.preemptions:
            break
    assert engine.batch.stats.preemptions == 1
    assert list(got) == [light]  # out of the step as well as out of the batch
    assert heavy._computed == 0 and list(engine.batch.waiting) == [heavy]
    assert engine.batch.kv_used == light._kv


@pytest.mark.parametrize("kv_cache_tokens", [4096, 200])
def test_running_requests_are_held_only_while_every_decode_fits(
    loop: asyncio.AbstractEventLoop, kv_cache_tokens: int
) -> None:
    # Seven heavy decodes fill 196 tokens of the cache; a one-token light prompt still
    # fits in it. With room to spare their decodes wait for its step; with fewer free
    # tokens than running requests they run, as Fairlane's vLLM scheduler does, whose
    # vLLM would otherwise preempt among the light requests only.
    engine = SteppedBatch(loop, "step", kv_cache_tokens=kv_cache_tokens)
    heavy = [engine.submit(20, HEAVY) for _ in range(7)]
    for _ in range(9):
        engine.step()
    assert engine.batch.kv_used == 196
    light = engine.submit(1, LIGHT)
    got = engine.step()
    if kv_cache_tokens == 200:
        assert set(got) & set(heavy)  # not held...
        victims = [req for req in heavy if req._computed == 0]
        assert victims == [heavy[-1]]  # ...and the preemption took the worst, the newest
        assert light.generated == 0
    else:
        assert list(got) == [light]
        assert engine.batch.stats.preemptions == 0


def test_a_prompt_on_its_way_holds_worse_prompts_not_decodes(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    engine = SteppedBatch(loop, isolation)
    heavy = engine.submit(50, HEAVY)
    engine.step()
    chunked = engine.submit(1000, HEAVY)
    assert prefilled(engine.step(), chunked) == 511  # beside heavy's decode
    queued = engine.submit(50, HEAVY)
    engine.batch.expected = 0  # Fairlane announced a light prompt
    for _ in range(2):  # not "held in vain": it holds until the prompt is here
        got = engine.step()
        assert (got.get(heavy), prefilled(got, chunked), prefilled(got, queued)) == (1, 0, 0)
    engine.batch.expected = None
    light = engine.submit(100, LIGHT)
    got = engine.step()
    assert (prefilled(got, light), prefilled(got, chunked), prefilled(got, queued)) == (100, 0, 0)
    assert got.get(heavy) == (None if isolation == "step" else 1)


def test_a_prompt_on_its_way_holds_nothing_of_its_own_level(
    loop: asyncio.AbstractEventLoop, isolation: Isolation
) -> None:
    engine = SteppedBatch(loop, isolation)
    heavy = engine.submit(1000, HEAVY)
    engine.batch.expected = 3  # the heavy tenant's own level
    assert prefilled(engine.step(), heavy) == 512
