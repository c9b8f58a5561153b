"""`fairlane bench noisy-neighbor`: quiet tenants' TTFT next to a flooding tenant.

Arms, each a fresh ``fairlane serve`` with its own simulator of the same preset and the
same seeded open-loop (Poisson) arrivals:

- ``solo``: the quiet tenants alone (the baseline their latency is compared with);
- ``fifo``: plus the flooder, Fairlane's queue in arrival order (what a shared engine does);
- ``token-bucket``: fifo, and the flooder limited to ``requests_per_minute`` = its equal
  share of the capacity measured in the fifo arm (a static per-tenant rate limit, the
  published middleware's fix);
- ``fair``: plus the flooder, Fairlane's fair scheduler.

``--engine vllm-cpu`` runs a real vLLM on CPU instead of the simulator, and ``--engine
external --engine-url URL`` an engine you started yourself (say vLLM on a GPU), which
every arm's ``fairlane serve`` reaches in turn.

With ``--gateways N`` (N > 1) every arm runs N ``fairlane serve`` in front of one shared
simulator (an ``external`` engine, ``max_inflight`` divided by N) sharing tenant state
through a Redis of its own (``state: redis``; ``--local-state``: each gateway alone), and
each tenant's requests go round-robin over the gateways. One more arm, on by default:

- ``spread``: two flooders of equal weight, ``flooder-pinned`` sending only to the first
  gateway and ``flooder-spread`` to all of them in turn; reported: their goodput ratio.

Reported per arm: quiet TTFT p50/p99 (each quiet tenant and pooled), the flooder's
goodput (content tokens received inside the window per second), its 429s and 503s,
and the load generator's event-loop lag; ratios against ``solo`` and ``fifo``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from fairlane.bench.cpu import CpuSnapshot
from fairlane.bench.engine_watch import EngineWatcher, queue_waits
from fairlane.bench.loadgen import Client, Workload, open_loop
from fairlane.bench.noisy_args import ALL_ARMS, add_arguments, check_arguments
from fairlane.bench.noisy_deploy import (
    arm_policy,
    check_external_engine,
    deploy,
    gateway_max_inflight,
    state_mode,
)
from fairlane.bench.noisy_report import (
    DEFAULT_HEADROOM,
    FLOODER,
    PINNED,
    SPREAD,
    ratios,
    render,
    summarize_arm,
    summarize_spread,
)
from fairlane.bench.realtime import realtime
from fairlane.bench.records import RunResult
from fairlane.bench.report import config_of, machine, write_json
from fairlane.bench.stack import run_until_stopped
from fairlane.engines.sim.presets import PRESETS
from fairlane.engines.sim.validation import count_tokens

__all__ = ["add_arguments", "run"]  # what `fairlane bench` calls

CHAT_TEMPLATE_TOKENS = 8  # the simulator adds 4 per message and 4 per conversation
KV_HEADROOM = 0.9
VLLM_CPU_MAX_INFLIGHT = 16  # the tiny model's batch on two cores, --max-num-seqs too


def default_max_inflight(preset_name: str, prompt_tokens: int, max_tokens: int) -> int:
    """As many requests as the engine runs at once without queueing: ``max_num_seqs``,
    unless that many of them would not fit in 90% of the KV cache."""
    preset = PRESETS[preset_name]
    fits = int(KV_HEADROOM * preset.kv_cache_tokens / (prompt_tokens + max_tokens))
    return max(1, min(preset.max_num_seqs, fits))


def run(args: argparse.Namespace) -> int:
    check_arguments(args)
    return run_until_stopped(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    if args.engine == "external":
        await check_external_engine(args.engine_url, args.model)
    workload = Workload("", args.model, args.prompt_words, args.max_tokens)
    prompt_tokens = (
        count_tokens(workload.prompt(), PRESETS[args.preset].chars_per_token) + CHAT_TEMPLATE_TOKENS
    )
    if args.engine != "sim":
        max_inflight = args.max_inflight or VLLM_CPU_MAX_INFLIGHT
    else:
        max_inflight = args.max_inflight or default_max_inflight(
            args.preset, prompt_tokens, args.max_tokens
        )
    quiet = [f"quiet-{i}" for i in range(1, args.tenants)]
    arms: dict[str, dict[str, Any]] = {}
    spread: dict[str, Any] | None = None
    bucket_rpm = args.bucket_rpm
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        for arm in [a for a in ALL_ARMS if a in args.arms]:
            rates = {q: args.quiet_rps for q in quiet}
            if arm == "spread":
                rates = {PINNED: args.flood_rps, SPREAD: args.flood_rps}
            elif arm != "solo":
                rates[FLOODER] = args.flood_rps
            if arm == "token-bucket" and bucket_rpm is None:
                bucket_rpm = 60.0 * arms["fifo"]["completed_rps"] / args.tenants
                if bucket_rpm <= 0:
                    print("token-bucket: skipped, fifo completed nothing in its window")
                    continue
            tenants = [PINNED, SPREAD] if arm == "spread" else [*quiet, FLOODER]
            policy = arm_policy(args, arm, tenants, max_inflight, bucket_rpm)
            result, observed = await _arm(arm, policy, rates, args, Path(tmp))
            if arm == "spread":
                headroom = DEFAULT_HEADROOM if args.headroom is None else args.headroom
                spread = summarize_spread(result, args.gateways, not args.local_state, headroom)
                spread |= observed
            else:
                arms[arm] = summarize_arm(arm, result, quiet, arms.get("solo")) | observed
            print(f"{arm}: done ({len(result.records)} requests)", flush=True)
    for summary in arms.values():
        summary["ratios"] = ratios(summary, arms)
    document = {
        "benchmark": "noisy-neighbor",
        "machine": info,
        "config": config_of(args),
        "gateways": args.gateways,
        "state": state_mode(args.gateways, args.local_state),
        "prompt_tokens": prompt_tokens,
        "max_inflight": max_inflight,
        "max_inflight_per_gateway": gateway_max_inflight(max_inflight, args.gateways),
        "bucket_rpm": bucket_rpm,
        "arms": arms,
        **({"spread": spread} if spread else {}),
    }
    write_json(args.output, document)
    text, valid = render(document, args.output.with_suffix(".png"))
    print(text)
    chart = f" and {args.output.with_suffix('.png')}" if arms else ""
    print(f"results: {args.output}{chart}")
    return 0 if valid else 3


async def _arm(
    arm: str,
    policy: dict[str, Any],
    rates: dict[str, float],
    args: argparse.Namespace,
    work: Path,
) -> tuple[RunResult, dict[str, Any]]:
    deployed = deploy(arm, policy, args.gateways, args.engine, work, args.engine_url)
    quiet = [tenant for tenant in rates if tenant not in (FLOODER, PINNED, SPREAD)]
    async with deployed as deployment:
        urls = deployment.urls
        workload = Workload(
            urls[0],
            args.model,
            args.prompt_words,
            args.max_tokens,
            max_tokens_spread=args.max_tokens_spread,
            seed=args.seed,
            more_urls=tuple(urls[1:]),
            pinned=frozenset({PINNED}),
            max_tokens_of=tuple(
                (tenant, args.quiet_max_tokens) for tenant in quiet if args.quiet_max_tokens
            ),
            # The benchmark's own engines have no prefix cache; yours may well have.
            unique_prompts=args.engine == "external",
        )
        async with aiohttp.ClientSession() as session:
            watcher = EngineWatcher(session, deployment.engine_url)
            sampler = asyncio.create_task(watcher.run())
            try:
                before = CpuSnapshot.take(deployment.pids)
                async with Client(workload) as client:
                    with realtime(args.realtime) as used:
                        watcher.t0 = time.perf_counter()
                        late = dict.fromkeys(quiet, args.warmup) if args.quiet_late else None
                        result = await open_loop(
                            client,
                            rates,
                            args.seed,
                            args.warmup,
                            args.duration,
                            120.0,
                            starts=late,
                        )
                cpu = CpuSnapshot.take(deployment.pids).since(before)
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            waits = await queue_waits(session, deployment.control_ports)
    wall = cpu.pop("wall")
    return result, {
        "engine": watcher.summary(*result.window),
        "cpu_cores": {role: seconds / wall for role, seconds in cpu.items()},
        "queue_wait_ms_mean": waits,
        "realtime": used,
    }
