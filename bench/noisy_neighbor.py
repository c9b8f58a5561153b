"""`fairlane bench noisy-neighbor`: quiet tenants' TTFT next to a flooding tenant.

Arms, each a fresh ``fairlane serve`` with its own simulator of the same preset and the
same seeded open-loop (Poisson) arrivals:

- ``solo``: the quiet tenants alone (the baseline their latency is compared with);
- ``fifo``: plus the flooder, Fairlane's queue in arrival order (what a shared engine does);
- ``token-bucket``: fifo, and the flooder limited to ``requests_per_minute`` = its equal
  share of the capacity measured in the fifo arm (a static per-tenant rate limit, the
  published middleware's fix);
- ``fair``: plus the flooder, Fairlane's fair scheduler.

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
from fairlane.bench.noisy_deploy import (
    MODEL,
    arm_policy,
    deploy,
    gateway_max_inflight,
    state_mode,
)
from fairlane.bench.noisy_report import (
    ARMS,
    DEFAULT_HEADROOM,
    FLOODER,
    PINNED,
    SPREAD,
    ratios,
    render,
    summarize_arm,
    summarize_spread,
)
from fairlane.bench.realtime import add_realtime_argument, realtime
from fairlane.bench.records import RunResult
from fairlane.bench.report import RESULTS_DIR, config_of, machine, write_json
from fairlane.bench.stack import run_until_stopped
from fairlane.engines.sim.openai_api import count_tokens
from fairlane.engines.sim.presets import PRESETS

CHAT_TEMPLATE_TOKENS = 8  # the simulator adds 4 per message and 4 per conversation
KV_HEADROOM = 0.9
ALL_ARMS = (*ARMS, "spread")
VLLM_CPU_MAX_INFLIGHT = 16  # the tiny model's batch on two cores, --max-num-seqs too


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0, help="measured s per arm")
    parser.add_argument("--warmup", type=float, default=20.0, help="unmeasured s per arm")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="a100-8b")
    parser.add_argument(
        "--engine",
        choices=["sim", "vllm-cpu"],
        default="sim",
        help="vllm-cpu: a real vLLM on CPU serving the tiny generated Llama, an external "
        "engine with --max-num-seqs = --max-inflight (needs vllm: run from .venv-e2e)",
    )
    parser.add_argument("--prompt-words", type=int, default=400, help="~1.25 tokens each")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--quiet-max-tokens",
        type=int,
        help="the quiet tenants' max_tokens (default: --max-tokens); short answers leave "
        "a quiet tenant with nothing in flight between its requests",
    )
    parser.add_argument(
        "--max-tokens-spread",
        type=float,
        default=0.0,
        help="vary max_tokens uniformly by +-this fraction (same mean); 0 = fixed. With "
        "fixed lengths, requests admitted together finish together: completions come in "
        "waves (docs/benchmarks.md)",
    )
    parser.add_argument("--tenants", type=int, default=2, help="N-1 quiet tenants + 1 flooder")
    parser.add_argument(
        "--unnamed",
        action="store_true",
        help="name no tenant in the policy: the quiet tenants and the flooder are ids of the "
        "shared `unknown` tenant, taking turns in its queue (no token-bucket arm: its "
        "bucket would limit them all)",
    )
    parser.add_argument("--flood-rps", type=float, default=32.0)
    parser.add_argument("--quiet-rps", type=float, default=1.0, help="per quiet tenant")
    parser.add_argument(
        "--max-inflight",
        type=int,
        help="Fairlane's engine capacity (default: the preset's max_num_seqs, lowered if "
        "that many requests of this shape would not fit in 90%% of the KV cache)",
    )
    parser.add_argument(
        "--bucket-rpm",
        type=float,
        help="token-bucket arm: the flooder's requests/min (default: 60 x the requests/s "
        "completed in the fifo arm / --tenants)",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ALL_ARMS,
        help=f"default: {' '.join(ARMS)}, and spread with --gateways > 1",
    )
    parser.add_argument(
        "--gateways",
        type=int,
        default=1,
        help="N > 1: N `fairlane serve` in front of one shared simulator, each with "
        "max_inflight / N, sharing tenant state through Redis; requests round-robin",
    )
    parser.add_argument(
        "--local-state",
        action="store_true",
        help="with --gateways > 1: `state: local` (no Redis), each gateway fair on its own",
    )
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="all arms: let Fairlane adapt the in-flight limit to the engine's /metrics "
        "(policy `adaptive: {}`), with --max-inflight as the ceiling",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        help="fair arm: the policy's `headroom` (default: the policy default)",
    )
    parser.add_argument(
        "--pacing",
        type=float,
        help="fair arm: the policy's `pacing` (default: the policy default)",
    )
    parser.add_argument(
        "--engine-nice",
        type=int,
        choices=range(20),
        metavar="0-19",
        help="all arms: the engine's CPU priority (default: as Fairlane runs a managed "
        "one: 0 for the simulator, 10 for vLLM; docs/engines.md, 'CPU priority')",
    )
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        help="all arms: the engine's token budget per step (vLLM's flag, which the "
        "simulator also takes; default: the engine's). Smaller steps: a prompt the engine "
        "puts first waits less behind others' prefills",
    )
    parser.add_argument("--seed", type=int, default=1)
    add_realtime_argument(parser)
    parser.add_argument(
        "--output",
        type=Path,
        help="default: bench/results/noisy-neighbor.json, or noisy-neighbor-gateways-N"
        "[-local].json with --gateways N > 1",
    )


def default_output(gateways: int, local_state: bool) -> Path:
    if gateways == 1:
        return RESULTS_DIR / "noisy-neighbor.json"
    return RESULTS_DIR / f"noisy-neighbor-gateways-{gateways}{'-local' if local_state else ''}.json"


def default_max_inflight(preset_name: str, prompt_tokens: int, max_tokens: int) -> int:
    """As many requests as the engine runs at once without queueing: ``max_num_seqs``,
    unless that many of them would not fit in 90% of the KV cache."""
    preset = PRESETS[preset_name]
    fits = int(KV_HEADROOM * preset.kv_cache_tokens / (prompt_tokens + max_tokens))
    return max(1, min(preset.max_num_seqs, fits))


def run(args: argparse.Namespace) -> int:
    if args.tenants < 2:
        raise SystemExit("--tenants must be at least 2 (one quiet tenant and the flooder)")
    if args.gateways < 1:
        raise SystemExit("--gateways must be at least 1")
    if args.arms is None:
        args.arms = list(ALL_ARMS if args.gateways > 1 else ARMS)
        if args.unnamed:
            args.arms.remove("token-bucket")
    if args.unnamed and "token-bucket" in args.arms:
        raise SystemExit("--unnamed has no token-bucket arm: the bucket would limit every id")
    if args.gateways == 1 and ("spread" in args.arms or args.local_state):
        raise SystemExit("the spread arm and --local-state need --gateways > 1")
    if "token-bucket" in args.arms and "fifo" not in args.arms and args.bucket_rpm is None:
        raise SystemExit("the token-bucket arm needs the fifo arm or --bucket-rpm")
    args.output = args.output or default_output(args.gateways, args.local_state)
    return run_until_stopped(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    workload = Workload("", MODEL, args.prompt_words, args.max_tokens)
    prompt_tokens = (
        count_tokens(workload.prompt(), PRESETS[args.preset].chars_per_token) + CHAT_TEMPLATE_TOKENS
    )
    if args.engine == "vllm-cpu":
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
    async with deploy(arm, policy, args.gateways, args.engine, work) as deployment:
        urls = deployment.urls
        workload = Workload(
            urls[0],
            MODEL,
            args.prompt_words,
            args.max_tokens,
            max_tokens_spread=args.max_tokens_spread,
            seed=args.seed,
            more_urls=tuple(urls[1:]),
            pinned=frozenset({PINNED}),
            max_tokens_of=tuple(
                (tenant, args.quiet_max_tokens)
                for tenant in rates
                if args.quiet_max_tokens and tenant not in (FLOODER, PINNED, SPREAD)
            ),
        )
        async with aiohttp.ClientSession() as session:
            watcher = EngineWatcher(session, deployment.engine_port)
            sampler = asyncio.create_task(watcher.run())
            try:
                before = CpuSnapshot.take(deployment.pids)
                async with Client(workload) as client:
                    with realtime(args.realtime) as used:
                        watcher.t0 = time.perf_counter()
                        result = await open_loop(
                            client, rates, args.seed, args.warmup, args.duration, 120.0
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
