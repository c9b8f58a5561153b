"""``heavy_prefill_tokens``: while a better priority level has arrived lately, a step
prefills at most that many prompt tokens of worse levels (the simulator's model, and the
pure parts of Fairlane's vLLM scheduler; the real vLLM scheduler is in the e2e tier)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from fairlane.engine_config import EngineConfig
from fairlane.engines.heavy_prefills import (
    CAP_ENV,
    RECENT_S,
    RecentLevels,
    cap_from_env,
    heavy_step_budget,
)
from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.engines.spec import engine_spec

from testkit.sim_batch import SteppedBatch

# On the tiny preset (8 sequences, 512 tokens a step), levels 0 and 1, as Fairlane gives
# a light tenant and one over its share.
LIGHT, HEAVY = 3, PRIORITY_LEVEL_SPAN + 7


def test_recent_levels_keep_the_best_level_for_its_window() -> None:
    recent = RecentLevels()
    assert recent.best(0.0) is None
    recent.saw(1, 0.0)
    recent.saw(0, 1.0)
    assert recent.best(1.0) == 0
    recent.saw(1, 20.0)
    assert recent.best(1.0 + RECENT_S) == 0
    assert recent.best(1.1 + RECENT_S) == 1  # level 0 went quiet; 1 is still about
    assert recent.best(20.1 + RECENT_S) is None


def test_the_vllm_budget_is_the_decodes_plus_the_cap_for_heavy_prompts_only() -> None:
    assert heavy_step_budget(2048, 384, pending=1, recent_best=0, decodes=200) == 584
    assert heavy_step_budget(512, 384, pending=1, recent_best=0, decodes=200) == 512
    # A light prompt pending, no better level about, nothing pending, no cap: as vLLM.
    assert heavy_step_budget(2048, 384, pending=0, recent_best=0, decodes=200) is None
    assert heavy_step_budget(2048, 384, pending=1, recent_best=None, decodes=200) is None
    assert heavy_step_budget(2048, 384, pending=None, recent_best=0, decodes=200) is None
    assert heavy_step_budget(2048, None, pending=1, recent_best=0, decodes=200) is None


@pytest.mark.parametrize(
    ("value", "cap"), [("384", 384), ("", None), ("0", None), ("-5", None), ("x", None)]
)
def test_the_cap_comes_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, value: str, cap: int | None
) -> None:
    monkeypatch.setenv(CAP_ENV, value)
    assert cap_from_env() == cap


def test_heavy_prompts_share_the_cap_while_a_better_level_is_about(
    loop: asyncio.AbstractEventLoop,
) -> None:
    engine = SteppedBatch(loop, "step", heavy_prefill_tokens=100)
    decoding = [engine.submit(40, HEAVY) for _ in range(3)]
    engine.step()  # no better level about: all three, 120 tokens
    first, second = engine.submit(150, HEAVY), engine.submit(150, HEAVY)
    engine.batch.recent_best = 0
    got = engine.step()
    assert [got[r] for r in decoding] == [1, 1, 1]  # decodes are not prompt tokens
    assert (got[first], got.get(second, 0)) == (100, 0)  # the rest waits: same level
    got = engine.step()
    assert (got[first], got[second]) == (50, 50)  # what is left, then the next


def test_a_light_prompt_and_a_heavy_one_alone_get_the_whole_budget(
    loop: asyncio.AbstractEventLoop,
) -> None:
    engine = SteppedBatch(loop, "step", heavy_prefill_tokens=100)
    light = engine.submit(400, LIGHT)
    engine.batch.recent_best = 0
    assert engine.step()[light] == 400  # its own level is not capped
    heavy = engine.submit(600, HEAVY)
    # Its level is the best about (it has the engine to itself): the budget, 512 less
    # the light decode.
    engine.batch.recent_best = 1
    assert engine.step()[heavy] == 511


def test_without_a_cap_heavy_prompts_fill_the_budget(loop: asyncio.AbstractEventLoop) -> None:
    engine = SteppedBatch(loop, "step")
    heavy = engine.submit(600, HEAVY)
    engine.batch.recent_best = 0
    assert engine.step()[heavy] == 512


def test_the_policy_s_cap_reaches_the_engine() -> None:
    fields = {"models": ["m"], "inject_priority": True, "heavy_prefill_tokens": 384}
    sim = engine_spec("s", EngineConfig.model_validate({"kind": "sim", **fields}), 9000)
    assert sim.argv[sim.argv.index("--heavy-prefill-tokens") + 1] == "384"
    vllm = engine_spec("v", EngineConfig.model_validate({"kind": "vllm", **fields}), 9000)
    assert vllm.env[CAP_ENV] == "384"  # its engine process reads it: no flag of vLLM's
    assert "--heavy-prefill-tokens" not in vllm.argv
    with pytest.raises(ValidationError, match="heavy_prefill_tokens needs isolated prefills"):
        EngineConfig.model_validate({"kind": "sim", **fields, "isolate_prefills": False})
