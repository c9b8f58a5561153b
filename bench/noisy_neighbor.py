"""`fairlane bench noisy-neighbor`: quiet tenants' TTFT next to a flooding tenant.

Arms, each a fresh ``fairlane serve`` with its own simulator of the same preset and the
same seeded open-loop (Poisson) arrivals:

- ``solo``: the quiet tenants alone (the baseline their latency is compared with);
- ``fifo``: plus the flooder, Fairlane's queue in arrival order (what a shared engine does);
- ``token-bucket``: fifo, and the flooder limited to ``requests_per_minute`` = its equal
  share of the capacity measured in the fifo arm (a static per-tenant rate limit, the
  published middleware's fix);
- ``fair``: plus the flooder, Fairlane's fair scheduler.

Reported per arm: quiet TTFT p50/p99 (each quiet tenant and pooled), the flooder's
goodput (content tokens received inside the window per second), its 429s and 503s,
and the load generator's event-loop lag; ratios against ``solo`` and ``fifo``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from fairlane.bench.loadgen import Client, RunResult, Workload, open_loop, realtime
from fairlane.bench.noisy_report import ARMS, FLOODER, ratios, render, summarize_arm
from fairlane.bench.report import RESULTS_DIR, config_of, machine, write_json
from fairlane.bench.stack import CpuSnapshot, FairlaneStack, free_ports, write_policy
from fairlane.engines.sim.openai_api import count_tokens
from fairlane.engines.sim.presets import PRESETS

MODEL = "bench-model"
_TIMEOUT = aiohttp.ClientTimeout(total=2)
CHAT_TEMPLATE_TOKENS = 8  # the simulator adds 4 per message and 4 per conversation
KV_HEADROOM = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=120.0, help="measured s per arm")
    parser.add_argument("--warmup", type=float, default=20.0, help="unmeasured s per arm")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="a100-8b")
    parser.add_argument("--prompt-words", type=int, default=400, help="~1.25 tokens each")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--max-tokens-spread",
        type=float,
        default=0.0,
        help="vary max_tokens uniformly by +-this fraction (same mean); 0 = fixed. With "
        "fixed lengths, requests admitted together finish together: completions come in "
        "waves (docs/benchmarks.md)",
    )
    parser.add_argument("--tenants", type=int, default=2, help="N-1 quiet tenants + 1 flooder")
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
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument(
        "--adaptive",
        action="store_true",
        help="all arms: let Fairlane adapt the in-flight limit to the engine's /metrics "
        "(policy `adaptive: {}`), with --max-inflight as the ceiling",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the load generator under SCHED_FIFO 10 (chrt -f 10) when permitted",
    )
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "noisy-neighbor.json")


def default_max_inflight(preset_name: str, prompt_tokens: int, max_tokens: int) -> int:
    """As many requests as the engine runs at once without queueing: ``max_num_seqs``,
    unless that many of them would not fit in 90% of the KV cache."""
    preset = PRESETS[preset_name]
    fits = int(KV_HEADROOM * preset.kv_cache_tokens / (prompt_tokens + max_tokens))
    return max(1, min(preset.max_num_seqs, fits))


def run(args: argparse.Namespace) -> int:
    if args.tenants < 2:
        raise SystemExit("--tenants must be at least 2 (one quiet tenant and the flooder)")
    if "token-bucket" in args.arms and "fifo" not in args.arms and args.bucket_rpm is None:
        raise SystemExit("the token-bucket arm needs the fifo arm or --bucket-rpm")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    workload = Workload("", MODEL, args.prompt_words, args.max_tokens)
    prompt_tokens = (
        count_tokens(workload.prompt(), PRESETS[args.preset].chars_per_token) + CHAT_TEMPLATE_TOKENS
    )
    max_inflight = args.max_inflight or default_max_inflight(
        args.preset, prompt_tokens, args.max_tokens
    )
    quiet = [f"quiet-{i}" for i in range(1, args.tenants)]
    arms: dict[str, dict[str, Any]] = {}
    bucket_rpm = args.bucket_rpm
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        for arm in [a for a in ARMS if a in args.arms]:
            rates = {q: args.quiet_rps for q in quiet}
            if arm != "solo":
                rates[FLOODER] = args.flood_rps
            if arm == "token-bucket" and bucket_rpm is None:
                bucket_rpm = 60.0 * arms["fifo"]["completed_rps"] / args.tenants
                if bucket_rpm <= 0:
                    print("token-bucket: skipped, fifo completed nothing in its window")
                    continue
            policy = _policy(args, arm, quiet, max_inflight, bucket_rpm)
            result, observed = await _arm(arm, policy, rates, args, Path(tmp))
            arms[arm] = summarize_arm(arm, result, quiet, arms.get("solo")) | observed
            print(f"{arm}: done ({len(result.records)} requests)", flush=True)
    for summary in arms.values():
        summary["ratios"] = ratios(summary, arms)
    document = {
        "benchmark": "noisy-neighbor",
        "machine": info,
        "config": config_of(args),
        "prompt_tokens": prompt_tokens,
        "max_inflight": max_inflight,
        "bucket_rpm": bucket_rpm,
        "arms": arms,
    }
    write_json(args.output, document)
    text, valid = render(document, args.output.with_suffix(".png"))
    print(text)
    print(f"results: {args.output} and {args.output.with_suffix('.png')}")
    return 0 if valid else 3


async def _arm(
    arm: str,
    policy: dict[str, Any],
    rates: dict[str, float],
    args: argparse.Namespace,
    work: Path,
) -> tuple[RunResult, dict[str, Any]]:
    listener = policy["listener"]
    stack = FairlaneStack(write_policy(work, policy, f"{arm}.yaml"), work / arm, listener["port"])
    workload = Workload(
        f"http://127.0.0.1:{listener['port']}",
        MODEL,
        args.prompt_words,
        args.max_tokens,
        max_tokens_spread=args.max_tokens_spread,
        seed=args.seed,
    )
    try:
        await stack.start()
        pids = stack.pids()
        async with aiohttp.ClientSession() as session:
            watcher = _EngineWatcher(session, policy["engines"]["sim"]["port"])
            sampler = asyncio.create_task(watcher.run())
            try:
                before = CpuSnapshot.take(pids)
                async with Client(workload) as client:
                    with realtime(args.realtime) as used:
                        watcher.t0 = time.perf_counter()
                        result = await open_loop(
                            client, rates, args.seed, args.warmup, args.duration, 120.0
                        )
                cpu = CpuSnapshot.take(pids).since(before)
            finally:
                sampler.cancel()
                await asyncio.gather(sampler, return_exceptions=True)
            waits = await _queue_waits(session, listener["control_port"])
    finally:
        await stack.stop()
    wall = cpu.pop("wall")
    return result, {
        "engine": watcher.summary(*result.window),
        "cpu_cores": {role: seconds / wall for role, seconds in cpu.items()},
        "queue_wait_ms_mean": waits,
        "realtime": used,
    }


class _EngineWatcher:
    """The engine's own queue, once a second: is Fairlane keeping it empty?"""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.t0 = time.perf_counter()  # reset to the load generator's start
        self.samples: list[tuple[float, float, float]] = []  # (time, waiting, running)

    async def run(self) -> None:
        names = ("vllm:num_requests_waiting", "vllm:num_requests_running")
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                async with self.session.get(self.url, timeout=_TIMEOUT) as resp:
                    values = _metric_sums(await resp.text(), names)
                    waiting, running = (values[name] for name in names)
                    self.samples.append((time.perf_counter() - self.t0, waiting, running))
            await asyncio.sleep(1.0)

    def summary(self, start: float, end: float) -> dict[str, float]:
        inside = [(w, r) for t, w, r in self.samples if start <= t < end] or [(0.0, 0.0)]
        return {
            "max_waiting": max(w for w, _ in inside),
            "mean_waiting": sum(w for w, _ in inside) / len(inside),
            "mean_running": sum(r for _, r in inside) / len(inside),
            "max_running": max(r for _, r in inside),
        }


async def _queue_waits(session: aiohttp.ClientSession, control_port: int) -> dict[str, float]:
    """Mean time each tenant's admitted requests waited in Fairlane's queue (whole run,
    warm-up included), from the worker's fairlane_queue_wait_seconds histogram."""
    url = f"http://127.0.0.1:{control_port}/metrics"
    try:
        async with session.get(url, timeout=_TIMEOUT) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return {}
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in text.splitlines():
        for suffix, into in (("_sum", sums), ("_count", counts)):
            prefix = f"fairlane_queue_wait_seconds{suffix}{{"
            if line.startswith(prefix):
                tenant = line.split('tenant="', 1)[1].split('"', 1)[0]
                into[tenant] = float(line.rsplit(" ", 1)[1])
    return {t: 1000.0 * sums[t] / n for t, n in counts.items() if n and t in sums}


def _metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    values = dict.fromkeys(names, 0.0)
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in values:
            values[name] += float(line.rsplit(" ", 1)[1])
    return values


def _policy(
    args: argparse.Namespace,
    arm: str,
    quiet: list[str],
    max_inflight: int,
    bucket_rpm: float | None,
) -> dict[str, Any]:
    port, admin, control, sim_port = free_ports(4)
    tenants: dict[str, Any] = {q: {} for q in quiet}
    tenants[FLOODER] = {}
    if arm == "token-bucket":
        tenants[FLOODER] = {"limits": {"requests_per_minute": bucket_rpm}}
    return {
        "version": 1,
        "listener": {
            "port": port,
            "admin_port": admin,
            "control_port": control,
            "drain_grace_s": 0,
        },
        "tenants": tenants,
        "unknown_tenants": {"mode": "reject"},
        "engines": {
            "sim": {
                "kind": "sim",
                "preset": args.preset,
                "port": sim_port,
                "models": [MODEL],
                "max_inflight": max_inflight,
                "scheduler": "fifo" if arm in ("fifo", "token-bucket") else "fair",
                **({"adaptive": {}} if args.adaptive else {}),
            }
        },
    }
