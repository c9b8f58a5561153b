"""`fairlane bench overhead`: what Envoy and Fairlane add on the way to one engine.

Three arms against the same simulator process: ``direct`` (the simulator's own port),
``envoy`` (a bare Envoy: listener -> router -> one cluster) and ``fairlane`` (the whole
``fairlane serve`` stack with the simulator as an ``external`` engine). Closed-loop
streaming chat completions at each concurrency. Arms are interleaved: each cell's
duration is cut into slices and every round runs the three arms in a rotated order, so
drift on the shared machine (other processes, thermal, page cache) hits all arms alike.
CPU per request of Envoy and of the worker comes from /proc over each arm's slices.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fairlane.bench.certificate import self_signed
from fairlane.bench.cpu import CpuSnapshot
from fairlane.bench.loadgen import Client, Workload, closed_loop
from fairlane.bench.plain_envoy import start_plain_envoy
from fairlane.bench.realtime import add_realtime_argument, realtime
from fairlane.bench.records import RequestRecord
from fairlane.bench.report import RESULTS_DIR, config_of, machine, table, write_json
from fairlane.bench.stack import (
    FairlaneStack,
    Server,
    bench_policy,
    free_ports,
    run_until_stopped,
    start_sim,
    write_policy,
)
from fairlane.bench.stats import difference, fmt, lag_ok, per_unit, ratio, summarize

ARMS = ("direct", "envoy", "fairlane")
HTTPS_ARM = "fairlane-https"  # with --https
MODEL = "bench-model"
TENANT = "bench"
THROUGHPUT_TARGET = 0.99
IDLE_SAMPLE_S = 3.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--presets",
        nargs="+",
        default=["h100-8b", "a100-8b"],
        help="simulator presets, one phase each: a fast one for latency, a100-8b for the "
        "throughput ratio (default: h100-8b a100-8b)",
    )
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--duration", type=float, default=20.0, help="measured s per cell and arm")
    parser.add_argument("--slices", type=int, default=4, help="interleaving rounds per cell")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured s per slice")
    parser.add_argument(
        "--https",
        action="store_true",
        help="add a fairlane-https arm: a second stack serving HTTPS (listener.tls, a "
        "self-signed certificate made with openssl), to measure what TLS adds",
    )
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=32)
    add_realtime_argument(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "overhead.json")


@dataclass
class Cell:
    """One (preset, concurrency, arm), accumulated over its slices."""

    records: list[RequestRecord] = field(default_factory=list)
    seconds: float = 0.0
    issued: int = 0
    lag_s: list[float] = field(default_factory=list)
    cpu_s: dict[str, float] = field(default_factory=dict)
    idle_cpu_s_per_s: dict[str, float] = field(default_factory=dict)
    realtime: bool = False


def run(args: argparse.Namespace) -> int:
    return run_until_stopped(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    cells: dict[tuple[str, int, str], Cell] = {}
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        for preset in args.presets:
            await _phase(preset, args, Path(tmp), cells)
    rows = [_summary(key, cell, cells) for key, cell in cells.items()]
    document = {
        "benchmark": "overhead",
        "machine": info,
        "config": config_of(args),
        "method": "closed loop; arms interleaved in rotated order per slice, same simulator",
        "rows": rows,
    }
    write_json(args.output, document)
    print(_table(rows))
    verdicts = _verdicts(rows, args.presets[-1])
    print("\n".join(verdicts))
    print(f"results: {args.output}")
    return 0 if all(r["lag_ok"] for r in rows) else 3


async def _phase(
    preset: str, args: argparse.Namespace, work: Path, cells: dict[tuple[str, int, str], Cell]
) -> None:
    sim_port, envoy_port, envoy_admin, port, admin, control = free_ports(6)
    servers: list[Server] = []
    stacks: list[FairlaneStack] = []
    arms = (*ARMS, HTTPS_ARM) if args.https else ARMS
    try:
        sim = await start_sim(preset, sim_port, MODEL, work)
        servers.append(sim)
        plain = await start_plain_envoy(envoy_port, envoy_admin, sim_port, work)
        servers.append(plain)
        policy = write_policy(work, _policy(port, admin, control, sim_port), f"{preset}.yaml")
        stacks.append(FairlaneStack(policy, work / f"run-{preset}", port))
        await stacks[0].start()
        pids = {"engine": sim.pid, "plain-envoy": plain.pid, **stacks[0].pids()}
        urls = {
            "direct": f"http://127.0.0.1:{sim_port}",
            "envoy": f"http://127.0.0.1:{envoy_port}",
            "fairlane": stacks[0].url,
        }
        if args.https:
            stacks.append(await _https_stack(preset, sim_port, work))
            urls[HTTPS_ARM] = stacks[1].url
            pids |= {f"{role}-https": pid for role, pid in stacks[1].pids().items()}
        idle = await _idle_rates(pids, IDLE_SAMPLE_S)
        for concurrency in args.concurrency:
            for round_ in range(args.slices):
                turn = round_ % len(arms)
                for arm in arms[turn:] + arms[:turn]:
                    cell = cells.setdefault((preset, concurrency, arm), Cell())
                    cell.idle_cpu_s_per_s = idle
                    workload = Workload(urls[arm], MODEL, args.prompt_words, args.max_tokens)
                    await _slice(cell, workload, concurrency, pids, args)
    finally:
        for stack in stacks:
            await stack.stop()
        for server in reversed(servers):
            await server.stop()


async def _https_stack(preset: str, sim_port: int, work: Path) -> FairlaneStack:
    """The same stack serving HTTPS, beside the first (the arms take turns)."""
    port, admin, control = free_ports(3)
    cert, key = self_signed(work)
    document = _policy(port, admin, control, sim_port)
    document["listener"]["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    policy = write_policy(work, document, f"{preset}-https.yaml")
    stack = FairlaneStack(policy, work / f"run-{preset}-https", port, scheme="https")
    await stack.start()
    return stack


async def _slice(
    cell: Cell,
    workload: Workload,
    concurrency: int,
    pids: dict[str, int],
    args: argparse.Namespace,
) -> None:
    slice_s = args.duration / args.slices
    before = CpuSnapshot.take(pids)
    async with Client(workload) as client:
        with realtime(args.realtime) as used:
            result = await closed_loop(client, TENANT, concurrency, args.warmup, slice_s)
    for role, seconds in CpuSnapshot.take(pids).since(before).items():
        cell.cpu_s[role] = cell.cpu_s.get(role, 0.0) + seconds
    cell.records += result.measured()
    cell.seconds += result.seconds
    cell.issued += len(result.records)
    cell.lag_s += result.lag_s
    cell.realtime = used


async def _idle_rates(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """CPU seconds per second each process uses with no load (timers, polling)."""
    before = CpuSnapshot.take(pids)
    await asyncio.sleep(seconds)
    used = CpuSnapshot.take(pids).since(before)
    return {role: used[role] / used["wall"] for role in pids}


def _summary(
    key: tuple[str, int, str], cell: Cell, cells: dict[tuple[str, int, str], Cell]
) -> dict[str, Any]:
    preset, concurrency, arm = key
    ok = [r for r in cell.records if r.ok]
    ttft = summarize([r.ttft for r in ok if r.ttft is not None], 1000.0)
    direct = cells[(preset, concurrency, "direct")]
    direct_ok = [r for r in direct.records if r.ok]
    direct_ttft = summarize([r.ttft for r in direct_ok if r.ttft is not None], 1000.0)
    rps = _throughput(concurrency, ok)
    lag = summarize(cell.lag_s, 1000.0)
    return {
        "preset": preset,
        "concurrency": concurrency,
        "arm": arm,
        "requests": len(cell.records),
        "errors": len(cell.records) - len(ok),
        "rps": rps,
        "rps_counted": len(ok) / cell.seconds,
        "rps_vs_direct": ratio(rps, _throughput(concurrency, direct_ok)),
        "latency_ms": summarize([r.end - r.sent for r in ok], 1000.0),
        "ttft_ms": ttft,
        "ttft_p50_added_ms": difference(ttft["p50"], direct_ttft["p50"]),
        "ttft_p99_vs_direct": ratio(ttft["p99"], direct_ttft["p99"]),
        "cpu_ms_per_request": _cpu_per_request(arm, cell),
        "idle_cpu_ms_per_s": {k: v * 1000.0 for k, v in cell.idle_cpu_s_per_s.items()},
        "background_cores": cell.cpu_s["background"] / cell.cpu_s["wall"],
        "loadgen_lag_ms": lag,
        "lag_ok": lag_ok(lag["p99"], direct_ttft["p50"]),
        "realtime": cell.realtime,
    }


def _throughput(concurrency: int, ok: list[RequestRecord]) -> float | None:
    """Closed loop, no think time: Little's law, concurrency / mean latency. Counting
    requests per window is quantised (one request is 1.3% of a 20 s cell at C=1)."""
    latencies = [r.end - r.sent for r in ok]
    return concurrency * len(latencies) / sum(latencies) if latencies else None


def _cpu_per_request(arm: str, cell: Cell) -> dict[str, float | None]:
    """CPU ms per request of the arm's own processes (the engine, its Envoy, the worker,
    the supervisor) and of the load generator, less what each uses when idle."""
    roles = {"engine": "engine"}
    if arm == "envoy":
        roles["envoy"] = "plain-envoy"
    if arm in ("fairlane", HTTPS_ARM):
        suffix = "-https" if arm == HTTPS_ARM else ""
        roles |= {name: name + suffix for name in ("envoy", "worker", "serve")}
    wall = cell.cpu_s["wall"]
    out = {
        name: per_unit(
            (cell.cpu_s[role] - cell.idle_cpu_s_per_s.get(role, 0.0) * wall) * 1000.0,
            cell.issued,
        )
        for name, role in roles.items()
    }
    out["loadgen"] = per_unit(cell.cpu_s["loadgen"] * 1000.0, cell.issued)
    return out


def _table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "preset", "C", "arm", "req/s x direct", "TTFT p50 +ms", "req/s", "TTFT p50 ms",
        "TTFT p99 ms", "Envoy CPU ms/req", "worker CPU ms/req", "errors", "lag p99 ms", "bg cores",
    ]  # fmt: skip
    lines = []
    for r in rows:
        cpu = r["cpu_ms_per_request"]
        lines.append(
            [
                r["preset"],
                str(r["concurrency"]),
                r["arm"],
                fmt(r["rps_vs_direct"], 4),
                fmt(r["ttft_p50_added_ms"], 2),
                fmt(r["rps"], 1),
                fmt(r["ttft_ms"]["p50"], 2),
                fmt(r["ttft_ms"]["p99"], 2),
                fmt(cpu.get("envoy"), 3),
                fmt(cpu.get("worker"), 3),
                str(r["errors"]),
                fmt(r["loadgen_lag_ms"]["p99"], 2) + ("" if r["lag_ok"] else " (LAG!)"),
                fmt(r["background_cores"], 2),
            ]
        )
    return table(headers, lines)


def _verdicts(rows: list[dict[str, Any]], throughput_preset: str) -> list[str]:
    out = []
    for r in rows:
        if r["preset"] == throughput_preset and r["arm"] == "fairlane":
            value = r["rps_vs_direct"]
            verdict = "PASS" if value is not None and value >= THROUGHPUT_TARGET else "FAIL"
            out.append(
                f"{verdict}: {throughput_preset} C={r['concurrency']}: throughput through "
                f"Fairlane {fmt(value, 4)}x direct (target >= {THROUGHPUT_TARGET})"
            )
    if not all(r["lag_ok"] for r in rows):
        out.append("WARNING: load-generator lag p99 above 10% of TTFT p50 in cells marked LAG!")
    return out


def _policy(port: int, admin: int, control: int, sim_port: int) -> dict[str, Any]:
    engine = {
        "kind": "external",
        "url": f"http://127.0.0.1:{sim_port}",
        "models": [MODEL],
        "max_inflight": 1024,
    }
    return bench_policy((port, admin, control), {TENANT: {}}, engine)
