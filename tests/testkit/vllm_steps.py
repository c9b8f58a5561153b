"""Fairlane's vLLM scheduler (``fairlane.engines.vllm_scheduler``) inside vLLM's own
scheduler code, step by step: ``run_script`` runs this file as a script in a child
process (so vLLM's import-time settings never reach the other tests of the tier), which
feeds a scenario to a scheduler and prints each step's scheduled tokens as JSON. No
model runs; the steps' outputs are fed back as one sampled token per request whose
prompt is done, as the engine core does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    if config.get("heavy"):
        print(json.dumps(heavy_prompt(sched, add, step, steps, bool(config.get("alone")))))
        return
    if config.get("announce"):
        print(json.dumps(announced(sched, add, step, steps)))
        return
    heavy_batch(add, step)
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


def heavy_batch(add: Any, step: Any) -> None:
    """The heavy tenant's running batch every script starts from: its ``DECODES``, past
    their prompts after one step."""
    for rid in DECODES:
        add(rid, 50, HEAVY)
    step()


def announced(sched: Any, add: Any, step: Any, steps: list[dict[str, int]]) -> dict[str, Any]:
    """Fairlane's worker announces a light prompt; a heavy one reaches the scheduler
    first, the light one two steps later."""
    from fairlane.engines.announcements import address_from_env
    from fairlane.extproc.announce import Announcer
    from fairlane.extproc.metrics import Metrics

    heavy_batch(add, step)
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


def heavy_prompt(
    sched: Any, add: Any, step: Any, steps: list[dict[str, int]], alone: bool
) -> dict[str, Any]:
    """A 1,000-token heavy prompt after a light request arrived (unless ``alone``), and a
    300-token light prompt while it is prefilled."""
    heavy_batch(add, step)
    if not alone:
        add("light", 20, LIGHT)
    step()
    add("big", 1000, HEAVY)
    step()
    step()
    add("light2", 300, LIGHT)
    step()
    step()
    return {"class": type(sched).__name__, "steps": steps}


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], "--async" in sys.argv)
