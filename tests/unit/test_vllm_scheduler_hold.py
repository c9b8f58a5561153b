"""``plan_hold``: what Fairlane's vLLM scheduler holds back for a step. Fake
requests here; tests/e2e/test_vllm_scheduler.py runs vLLM's real scheduler with it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.engines.vllm_scheduler import plan_hold, step_fits


class FakeStatus(Enum):  # the names of vLLM's RequestStatus
    WAITING = auto()
    PREEMPTED = auto()
    WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR = auto()
    RUNNING = auto()


@dataclass(eq=False)
class FakeRequest:
    request_id: str
    priority: int
    num_prompt_tokens: int = 100
    num_computed_tokens: int = 0
    status: FakeStatus = FakeStatus.WAITING


def level(level: int, rank: int = 0) -> int:
    """A priority as Fairlane gives one: the level holds, the rank only orders."""
    return level * PRIORITY_LEVEL_SPAN + rank


def decoding(rid: str, priority: int) -> FakeRequest:
    return FakeRequest(rid, priority, num_computed_tokens=100, status=FakeStatus.RUNNING)


def part_way(rid: str, priority: int) -> FakeRequest:
    return FakeRequest(rid, priority, num_computed_tokens=40, status=FakeStatus.RUNNING)


def test_a_better_waiting_prompt_holds_worse_prompts_not_decodes() -> None:
    running = [decoding("d", level(3)), part_way("chunked", level(3))]
    waiting = [
        FakeRequest("light", level(0)),
        FakeRequest("heavy", level(3)),
        FakeRequest("mid", level(1)),
    ]
    hold = plan_hold(running, waiting, slot_free=True)
    assert hold.bar == 0
    assert [r.request_id for r in hold.running] == ["chunked"]
    assert [r.request_id for r in hold.waiting] == ["heavy", "mid"]
    assert [r.request_id for r in hold.better] == ["light"]


def test_a_step_of_its_own_holds_worse_decodes_too() -> None:
    running = [
        decoding("d", level(3)),
        decoding("light-d", level(0)),
        part_way("chunked", level(3)),
    ]
    waiting = [FakeRequest("light", level(0)), FakeRequest("heavy", level(3))]
    hold = plan_hold(running, waiting, slot_free=True, isolation="step")
    assert [r.request_id for r in hold.running] == ["d", "chunked"]  # not light-d
    assert [r.request_id for r in hold.waiting] == ["heavy"]
    # With no better prompt pending, decodes are never held.
    assert plan_hold(running[:2], [], slot_free=True, isolation="step").running == []


def test_a_better_prompt_part_way_through_holds_too() -> None:
    running = [part_way("light", level(0)), part_way("chunked", level(3))]
    hold = plan_hold(running, [FakeRequest("heavy", level(3))], slot_free=False)
    assert (hold.bar, [r.request_id for r in hold.running]) == (0, ["chunked"])
    assert [r.request_id for r in hold.waiting] == ["heavy"]


def test_nothing_held_among_equals_or_with_no_prompt_pending() -> None:
    assert plan_hold([decoding("d", level(0))], [], slot_free=True).bar is None
    hold = plan_hold([part_way("a", level(2))], [FakeRequest("b", level(2))], slot_free=True)
    assert (hold.bar, hold.running, hold.waiting) == (2, [], [])


def test_ranks_under_a_level_hold_nothing() -> None:
    """A tenant's burst under its share gets ranks 0, 1, 2...: the engine orders its
    prompts by them, but nothing of the same level is held for a better rank."""
    running = [part_way("burst-9", level(0, 9)), decoding("burst-3", level(0, 3))]
    waiting = [FakeRequest("quiet", level(0, 1)), FakeRequest("flood", level(1, 0))]
    hold = plan_hold(running, waiting, slot_free=True, isolation="step")
    assert hold.bar == 0
    assert hold.running == []
    assert [r.request_id for r in hold.waiting] == ["flood"]  # a worse level, whatever rank
    assert [r.request_id for r in hold.better] == ["burst-9", "quiet"]


def test_a_better_prompt_that_cannot_start_holds_nothing() -> None:
    waiting = [
        FakeRequest("grammar", level(0), status=FakeStatus.WAITING_FOR_STRUCTURED_OUTPUT_GRAMMAR),
        FakeRequest("heavy", level(3)),
    ]
    hold = plan_hold([], waiting, slot_free=True)
    assert (hold.bar, hold.waiting) == (3, [])  # the grammar is not ready: heavy goes on
    # No free slot: a waiting prompt could not start this step whatever its priority.
    assert (
        plan_hold([part_way("chunked", level(3))], [FakeRequest("light", level(0))], False).running
        == []
    )


def test_a_preempted_request_counts_as_waiting() -> None:
    waiting = [
        FakeRequest("back", level(0), status=FakeStatus.PREEMPTED),
        FakeRequest("heavy", level(3)),
    ]
    assert [r.request_id for r in plan_hold([], waiting, slot_free=True).waiting] == ["heavy"]


def test_a_step_fits_when_the_free_blocks_cover_every_running_request() -> None:
    # Blocks of 16: a decode takes at most one; a 100-token chunk at most 7; a request
    # with nothing left to compute still gets a token (under async scheduling, its next).
    assert step_fits(1 + 7 + 1, [1, 100, 0], token_budget=512, block_size=16, lookahead=0)
    assert not step_fits(8, [1, 100, 0], token_budget=512, block_size=16, lookahead=0)
    # No request computes more than the budget in one step...
    assert step_fits(4, [5000], token_budget=64, block_size=16, lookahead=0)
    # ...and speculative slots come on top of each.
    assert not step_fits(1, [1], token_budget=512, block_size=16, lookahead=16)
    assert step_fits(2, [1], token_budget=512, block_size=16, lookahead=16)


def test_a_prompt_on_its_way_holds_worse_prompts_but_no_decode() -> None:
    running = [decoding("d", level(3)), part_way("chunked", level(3))]
    waiting = [FakeRequest("heavy", level(3)), FakeRequest("mid", level(1))]
    hold = plan_hold(running, waiting, slot_free=True, isolation="step", expected=0)
    assert (hold.bar, hold.announced) == (0, True)
    # Nothing better is here yet: decodes run, even with a step of its own to come.
    assert [r.request_id for r in hold.running] == ["chunked"]
    assert [r.request_id for r in hold.waiting] == ["heavy", "mid"]
    assert hold.better == []


def test_a_prompt_on_its_way_needs_a_free_slot_and_a_better_level() -> None:
    running = [part_way("chunked", level(3))]
    assert plan_hold(running, [], slot_free=False, expected=0) == plan_hold(running, [], False)
    # A better prompt already here: the ordinary hold, decodes too with `step`.
    running.append(decoding("d", level(3)))
    waiting = [FakeRequest("light", level(0))]
    hold = plan_hold(running, waiting, slot_free=True, isolation="step", expected=1)
    assert (hold.bar, hold.announced) == (0, False)
    assert [r.request_id for r in hold.running] == ["chunked", "d"]
    # One no better than the worst here holds nothing.
    assert plan_hold(running, [], slot_free=True, expected=3).running == []
