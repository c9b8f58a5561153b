"""Fairlane's vLLM scheduler (``fairlane.engines.vllm_scheduler``) inside vLLM's own
scheduler code: step by step, which prompt tokens each step schedules, against vLLM's
plain ``Scheduler`` on the same script (``testkit.vllm_steps``).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from fairlane.engines.announcements import ADDRESS_ENV
from fairlane.engines.heavy_prefills import CAP_ENV

from testkit.vllm_steps import DECODES, prompts, run_script


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_light_prompt_shares_its_step_with_decodes_only(
    tiny_model: Path, async_scheduling: bool
) -> None:
    plain = run_script(tiny_model, "plain", async_scheduling)
    isolated = run_script(tiny_model, "isolated", async_scheduling)
    expected_base = "AsyncScheduler" if async_scheduling else "Scheduler"
    assert plain["class"] == expected_base
    assert isolated["class"] == f"IsolatedPrefills{expected_base}"
    # vLLM fills the 512-token budget: the heavy prompt rides in the light one's step,
    # and a chunked heavy prompt goes on ahead of the next light one.
    assert [prompts(s) for s in plain["steps"][1:7]] == [
        {"light": 200, "heavy": 200},
        {},
        {"big": 507},  # 512 less five decodes
        {"big": 493, "light2": 14},
        {"light2": 506},
        {"light2": 180},
    ]
    assert [prompts(s) for s in isolated["steps"][1:7]] == [
        {"light": 200},
        {"heavy": 200},
        {"big": 507},
        {"light2": 507},  # big's next chunk waits...
        {"light2": 193},
        {"big": 493},  # ...until light2's prompt is in
    ]
    for steps in (plain["steps"], isolated["steps"]):  # decodes never wait
        assert all(s[rid] == 1 for s in steps[1:] for rid in DECODES)


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_light_prompt_gets_a_step_of_its_own(tiny_model: Path, async_scheduling: bool) -> None:
    run = run_script(tiny_model, "isolated-steps", async_scheduling)
    expected_base = "AsyncScheduler" if async_scheduling else "Scheduler"
    assert run["class"] == f"IsolatedPrefillSteps{expected_base}"
    heavy = ["d0", "d1", "d2", "heavy"]
    # The light prompts' steps carry the light decodes only; the worse decodes wait for
    # the step after and then go on, a token each.
    assert run["steps"][1:8] == [
        {"light": 200},
        {"light": 1, "d0": 1, "d1": 1, "d2": 1, "heavy": 200},
        {"light": 1, **dict.fromkeys(heavy, 1), "big": 507},
        {"light": 1, "light2": 511},
        {"light": 1, "light2": 189},
        {"light": 1, "light2": 1, **dict.fromkeys(heavy, 1), "big": 493},
        {"light": 1, "light2": 1, **dict.fromkeys(heavy, 1), "big": 1},
    ]


def test_a_light_prompt_without_room_holds_the_others_one_step_at_most(
    tiny_model: Path,
) -> None:
    # 120 blocks of 16 tokens: with the 1,200-token prompt, no room for 900 more.
    run = run_script(tiny_model, "isolated", False, blocks=120, big=1200, light2=900)
    assert [prompts(s) for s in run["steps"][3:9]] == [
        {"big": 507},
        {},  # held back for light2, which did not fit: in vain...
        {"big": 507},  # ...so not the next step
        {},
        {"big": 186},
        {},  # light2 waits for room; nothing worse is pending
    ]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_under_kv_pressure_the_worst_request_is_preempted_not_a_light_one(
    tiny_model: Path, async_scheduling: bool
) -> None:
    plain = run_script(tiny_model, "plain", async_scheduling, blocks=19, pressure=1)
    steps = run_script(tiny_model, "isolated-steps", async_scheduling, blocks=19, pressure=1)
    # Holding w1 and w2 out of light2's step would leave vLLM only the light requests
    # to choose a victim from; the hold gives way, and vLLM preempts as it would alone.
    assert plain["preemptions"] == {"light": 0, "w1": 0, "w2": 1, "light2": 0}
    assert steps["preemptions"] == plain["preemptions"]


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_light_prompt_on_its_way_holds_a_heavy_one_that_arrives_first(
    tiny_model: Path, async_scheduling: bool
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {ADDRESS_ENV: f"127.0.0.1:{port}"}  # as the supervisor sets it for a managed vLLM
    told = run_script(tiny_model, "isolated", async_scheduling, env, announce=1)
    untold = run_script(tiny_model, "isolated", async_scheduling, announce=1)
    # Announced by Fairlane's worker, the light prompt is expected: the heavy one waits
    # for it, the decodes do not. Unannounced, the heavy prompt goes as it arrives.
    assert [prompts(s) for s in told["steps"][1:5]] == [{}, {}, {"light": 200}, {"heavy": 200}]
    assert [prompts(s) for s in untold["steps"][1:5]] == [{"heavy": 200}, {}, {"light": 200}, {}]
    assert all(s[rid] == 1 for s in told["steps"][1:] for rid in DECODES)
    # What the engine's log summarises every minute: heard two steps before its request.
    assert told["heard"].startswith("level 0: 1 announced, 1 met, 1 in time for a step")
    assert untold["heard"].startswith("none announced")


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_heavy_prompt_is_prefilled_in_capped_chunks_while_a_light_tenant_is_about(
    tiny_model: Path, async_scheduling: bool
) -> None:
    env = {CAP_ENV: "100"}  # as the supervisor sets it for heavy_prefill_tokens: 100
    capped = run_script(tiny_model, "isolated", async_scheduling, env, heavy=1)
    alone = run_script(tiny_model, "isolated", async_scheduling, env, heavy=1, alone=1)
    # The light request's level arrived lately: big goes in 100-token chunks, and the
    # light prompt that comes meanwhile still gets the whole budget (512 less 4 decodes).
    assert [prompts(s) for s in capped["steps"][2:6]] == [
        {"big": 100},
        {"big": 100},
        {"light2": 300},
        {"big": 100},
    ]
    # No better level about: the cap does not apply (512 less three decodes).
    assert [prompts(s) for s in alone["steps"][2:5]] == [
        {"big": 509},
        {"big": 491},
        {"light2": 300},
    ]
    assert all(s[rid] == 1 for s in capped["steps"][1:] for rid in DECODES)
