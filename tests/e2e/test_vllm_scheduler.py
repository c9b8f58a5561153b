"""Fairlane's vLLM scheduler (``fairlane.engines.vllm_scheduler``) inside vLLM's own
scheduler code: step by step, which prompt tokens each step schedules, against vLLM's
plain ``Scheduler`` on the same script. No model runs; the steps' outputs are fed back
as one sampled token per request whose prompt is done, as the engine core does.

vLLM is imported in a child process (this file run as a script), so its import-time
settings never reach the other tests of the tier.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fairlane.engines.announcements import ADDRESS_ENV
from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN

DECODES = ["d0", "d1", "d2"]
# Priorities as Fairlane gives them: a level (what holds), a rank under it.
LIGHT, HEAVY = 1, 3 * PRIORITY_LEVEL_SPAN + 5  # levels 0 and 3


def run_script(
    model: Path,
    scheduler: str,
    async_scheduling: bool,
    env: dict[str, str] | None = None,
    **config: int,
) -> Any:
    argv = [sys.executable, "-P", __file__, str(model), scheduler, json.dumps(config)]
    argv += ["--async"] if async_scheduling else []
    environ = {**os.environ, **(env or {})}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=environ)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def prompts(step: dict[str, int]) -> dict[str, int]:
    """The step's prompt chunks (a decode computes one token)."""
    return {rid: n for rid, n in step.items() if n > 1}


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


def main(model: str, scheduler: str, raw_config: str, async_scheduling: bool) -> None:
    """The script: print the class and each step's scheduled tokens as JSON."""
    import torch
    from vllm.config import CacheConfig, ModelConfig, SchedulerConfig, VllmConfig
    from vllm.sampling_params import SamplingParams
    from vllm.v1.core.sched.async_scheduler import AsyncScheduler
    from vllm.v1.core.sched.scheduler import Scheduler
    from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
    from vllm.v1.outputs import ModelRunnerOutput
    from vllm.v1.request import Request
    from vllm.v1.structured_output import StructuredOutputManager

    from fairlane.engines.vllm_scheduler import isolated_prefill_steps, isolated_prefills

    config = {"blocks": 1000, "big": 1000, "light2": 700, **json.loads(raw_config)}
    cache = CacheConfig(block_size=16, enable_prefix_caching=False)
    cache.num_gpu_blocks = config["blocks"]
    vllm_config = VllmConfig(
        model_config=ModelConfig(
            model=model, skip_tokenizer_init=True, dtype="float32", max_model_len=2048
        ),
        cache_config=cache,
        scheduler_config=SchedulerConfig(
            max_num_seqs=8,
            max_num_batched_tokens=512,
            max_model_len=2048,
            is_encoder_decoder=False,
            policy="priority",
            enable_chunked_prefill=True,
        ),
    )
    # vLLM's CPU platform turns async scheduling off; a GPU has it on by default.
    vllm_config.scheduler_config.async_scheduling = async_scheduling
    kv_spec = FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=1, dtype=torch.float32)
    arguments: dict[str, Any] = {
        "vllm_config": vllm_config,
        "kv_cache_config": KVCacheConfig(
            num_blocks=config["blocks"],
            kv_cache_tensors=[],
            kv_cache_groups=[KVCacheGroupSpec(["layer"], kv_spec)],
        ),
        "structured_output_manager": StructuredOutputManager(vllm_config),
        "log_stats": False,
        "block_size": 16,
    }
    if scheduler == "isolated":
        sched = isolated_prefills(**arguments)
    elif scheduler == "isolated-steps":
        sched = isolated_prefill_steps(**arguments)
    else:
        sched = (AsyncScheduler if async_scheduling else Scheduler)(**arguments)
    steps: list[dict[str, int]] = []

    def add(rid: str, tokens: int, priority: int) -> None:
        params = SamplingParams(max_tokens=20, ignore_eos=True)
        sched.add_request(
            Request(rid, [1] * tokens, params, None, priority=priority, arrival_time=time.time())
        )

    def step() -> None:
        out = sched.schedule()
        ids = list(out.num_scheduled_tokens)
        done = [sched.requests[rid] for rid in ids]
        sampled = [[5] if r.num_computed_tokens >= r.num_prompt_tokens else [] for r in done]
        index = {rid: i for i, rid in enumerate(ids)}
        sched.update_from_output(out, ModelRunnerOutput(ids, index, sampled))
        steps.append(dict(out.num_scheduled_tokens))

    if config.get("pressure"):
        print(json.dumps(under_pressure(sched, add, step)))
        return
    if config.get("announce"):
        print(json.dumps(announced(sched, add, step, steps)))
        return
    for rid in DECODES:
        add(rid, 50, HEAVY)
    step()
    add("heavy", 200, HEAVY)
    add("light", 200, LIGHT)
    step()
    step()
    add("big", config["big"], HEAVY)
    step()
    add("light2", config["light2"], LIGHT)
    for _ in range(5):
        step()
    print(json.dumps({"class": type(sched).__name__, "steps": steps}))


def under_pressure(sched: Any, add: Any, step: Any) -> dict[str, Any]:
    """A light decode needs a new KV block while a light prompt waits and the cache is
    full (18 usable blocks of 16 tokens): who is preempted?"""
    add("light", 30, LIGHT)  # 2 blocks
    step()
    add("w1", 120, HEAVY)  # 8 blocks each: the cache is full
    add("w2", 120, HEAVY)
    step()
    step()  # light's 32nd token: its 2nd block's last slot
    add("light2", 10, LIGHT)
    for _ in range(3):
        step()  # light's 33rd token needs a 3rd block
    return {
        "class": type(sched).__name__,
        "preemptions": {rid: r.num_preemptions for rid, r in sched.requests.items()},
    }


def announced(sched: Any, add: Any, step: Any, steps: list[dict[str, int]]) -> dict[str, Any]:
    """Fairlane's worker announces a light prompt; a heavy one reaches the scheduler
    first, the light one two steps later."""
    from fairlane.engines.announcements import address_from_env
    from fairlane.extproc.announce import Announcer
    from fairlane.extproc.metrics import Metrics

    for rid in DECODES:
        add(rid, 50, HEAVY)
    step()
    announcer = Announcer(Metrics())
    address = address_from_env()
    announcer.listen_at({"e": address} if address else {})
    announcer.announce("e", LIGHT)
    time.sleep(0.01)  # loopback: there already
    add("heavy", 200, HEAVY)
    step()
    step()
    add("light", 200, LIGHT)
    step()
    step()
    announcer.close()
    return {"class": type(sched).__name__, "steps": steps, "heard": sched._expected.summary()}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--async" in sys.argv)
