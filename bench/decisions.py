"""`fairlane bench decisions`: how many admit decisions the worker makes per CPU second.

The worker runs alone (no Envoy, no engine: ``engines.json`` marks the engine up). A
grpc.aio client plays Envoy over the worker's unix socket: each decision is one
``ExternalProcessor/Process`` stream carrying one ``request_headers`` message (tenant and
content-length headers, the ``fairlane.request`` metadata json_to_metadata would add),
answered once; its lease goes back on one long-lived ``StreamAccessLogs`` stream, batched
like Envoy's gRPC access logger, so the slot is released. The worker's CPU time comes
from /proc; decisions per core = 1 / CPU per decision. The client's messages:
``fake_envoy.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from envoy.service.accesslog.v3 import als_pb2_grpc
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ep_grpc

from fairlane.bench.cpu import CpuSnapshot, cpu_seconds
from fairlane.bench.fake_envoy import decision_request, lease_of, release_leases
from fairlane.bench.realtime import add_realtime_argument, realtime
from fairlane.bench.report import RESULTS_DIR, config_of, machine, table, write_json
from fairlane.bench.stack import Server, free_ports, run_until_stopped, write_policy
from fairlane.bench.stats import fmt, per_unit, summarize

MODEL = "bench-model"
ENGINE = "sim"
TARGET_PER_CORE = 3000.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 16])
    parser.add_argument("--decisions", type=int, default=20000, help="measured, per cell")
    parser.add_argument("--warmup", type=int, default=2000, help="unmeasured, per cell")
    parser.add_argument("--tenants", type=int, default=8, help="tenants, round robin")
    parser.add_argument("--scheduler", choices=["fair", "fifo"], default="fair")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure a do-nothing grpc.aio ext_proc server (bench/null_worker.py)",
    )
    add_realtime_argument(parser, "the client")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "decisions.json")


def run(args: argparse.Namespace) -> int:
    return run_until_stopped(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    tenants = [f"tenant-{i}" for i in range(args.tenants)]
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        work = Path(tmp)
        worker, socket = await _start_worker(work, tenants, args.scheduler)
        try:
            idle_before = cpu_seconds(worker.pid)
            await asyncio.sleep(2.0)
            idle_ms_per_s = (cpu_seconds(worker.pid) - idle_before) * 1000 / 2.0
            rows = await _cells("fairlane", socket, worker.pid, tenants, args)
        finally:
            await worker.stop()
        if args.baseline:
            null_socket = work / "null.sock"
            argv = [sys.executable, "-P", "-m", "fairlane.bench.null_worker", str(null_socket)]
            null = Server("null worker", argv, work / "null.log")
            await null.start()
            try:
                rows += await _cells("null", null_socket, null.pid, tenants, args)
            finally:
                await null.stop()
    document = {
        "benchmark": "decisions",
        "machine": info,
        "config": config_of(args),
        "worker_idle_cpu_ms_per_s": idle_ms_per_s,
        "rows": rows,
    }
    write_json(args.output, document)
    print(_table(rows))
    print(f"worker idle CPU: {idle_ms_per_s:.2f} ms/s (engines.json polling), included above")
    for r in rows:
        if r["server"] != "fairlane":
            continue
        verdict = "PASS" if (r["decisions_per_core_s"] or 0) >= TARGET_PER_CORE else "FAIL"
        print(
            f"{verdict}: C={r['concurrency']}: {fmt(r['decisions_per_core_s'], 0)} decisions/s "
            f"per core of worker CPU (target >= {TARGET_PER_CORE:.0f})"
        )
    print(f"results: {args.output}")
    return 0 if all(r["errors"] == 0 for r in rows) else 1


async def _start_worker(work: Path, tenants: list[str], scheduler: str) -> tuple[Server, Path]:
    """The worker alone, its engine marked up in engines.json; waits for /health."""
    run_dir = work / "run"
    run_dir.mkdir()
    states = {ENGINE: {"state": "up", "host": "127.0.0.1", "port": 1}}
    (run_dir / "engines.json").write_text(json.dumps({"version": 1, "engines": states}))
    port, admin, control = free_ports(3)
    policy = write_policy(work, _policy(port, admin, control, tenants, scheduler))
    argv = [
        sys.executable, "-P", "-m", "fairlane.worker",
        "--config", str(policy), "--run-dir", str(run_dir),
    ]  # fmt: skip
    worker = Server("worker", argv, work / "worker.log")
    await worker.start()
    await worker.wait_healthy(f"http://127.0.0.1:{control}/health", 30)
    return worker, run_dir / "worker.sock"


async def _cells(
    server: str, socket: Path, pid: int, tenants: list[str], args: argparse.Namespace
) -> list[dict[str, Any]]:
    rows = []
    async with grpc.aio.insecure_channel(f"unix:{socket}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 10)
        for concurrency in args.concurrency:
            rows.append({"server": server} | await _cell(channel, pid, tenants, concurrency, args))
    return rows


async def _cell(
    channel: grpc.aio.Channel,
    worker_pid: int,
    tenants: list[str],
    concurrency: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    process = ep_grpc.ExternalProcessorStub(channel).Process
    requests = [decision_request(t, MODEL, args.max_tokens) for t in tenants]
    leases: asyncio.Queue[str] = asyncio.Queue()
    releaser = asyncio.create_task(
        release_leases(als_pb2_grpc.AccessLogServiceStub(channel), leases)
    )
    latencies: list[float] = []
    errors = 0

    async def decide(count: int, offset: int) -> None:
        nonlocal errors
        for i in range(count):
            started = time.perf_counter()
            async for response in process(iter([requests[(offset + i) % len(requests)]])):
                latencies.append(time.perf_counter() - started)
                lease = lease_of(response)
                if lease is None:
                    errors += 1
                else:
                    leases.put_nowait(lease)

    with realtime(args.realtime) as used:
        await _together(decide, args.warmup, concurrency)
        await _drained(leases)
        latencies.clear()
        before = CpuSnapshot.take({"worker": worker_pid})
        await _together(decide, args.decisions, concurrency)
        elapsed = time.monotonic() - before.wall
        await _drained(leases)
        await asyncio.sleep(0.1)  # the last access-log batch is handled
        cpu = CpuSnapshot.take({"worker": worker_pid}).since(before)
    releaser.cancel()
    await asyncio.gather(releaser, return_exceptions=True)
    cpu_us = per_unit(cpu["worker"] * 1e6, args.decisions)
    return {
        "concurrency": concurrency,
        "decisions": args.decisions,
        "errors": errors,
        "decisions_per_s": args.decisions / elapsed,
        "latency_us": summarize(latencies, 1e6),
        "worker_cpu_us_per_decision": cpu_us,
        "decisions_per_core_s": 1e6 / cpu_us if cpu_us else None,
        "client_cpu_us_per_decision": per_unit(cpu["loadgen"] * 1e6, args.decisions),
        "background_cores": cpu["background"] / cpu["wall"],
        "realtime": used,
    }


async def _together(
    decide: Callable[[int, int], Awaitable[None]],
    count: int,
    concurrency: int,
    timeout_s: float = 600.0,
) -> None:
    share, extra = divmod(count, concurrency)
    jobs = [decide(share + (1 if i < extra else 0), i) for i in range(concurrency)]
    await asyncio.wait_for(asyncio.gather(*jobs), timeout_s)


async def _drained(leases: asyncio.Queue[str], timeout_s: float = 30.0) -> None:
    await asyncio.wait_for(leases.join(), timeout_s)


def _table(rows: list[dict[str, Any]]) -> str:
    headers = [
        "server", "C", "decisions/s per core", "worker CPU µs/decision", "decisions/s", "p50 µs",
        "p99 µs", "client CPU µs/decision", "errors", "bg cores",
    ]  # fmt: skip
    return table(
        headers,
        [
            [
                r["server"],
                str(r["concurrency"]),
                fmt(r["decisions_per_core_s"], 0),
                fmt(r["worker_cpu_us_per_decision"], 1),
                fmt(r["decisions_per_s"], 0),
                fmt(r["latency_us"]["p50"], 0),
                fmt(r["latency_us"]["p99"], 0),
                fmt(r["client_cpu_us_per_decision"], 1),
                str(r["errors"]),
                fmt(r["background_cores"], 2),
            ]
            for r in rows
        ],
    )


def _policy(
    port: int, admin: int, control: int, tenants: list[str], scheduler: str
) -> dict[str, Any]:
    return {
        "version": 1,
        "listener": {"port": port, "admin_port": admin, "control_port": control},
        "tenants": {t: {} for t in tenants},
        "unknown_tenants": {"mode": "reject"},
        "engines": {
            ENGINE: {
                "kind": "sim",
                "models": [MODEL],
                "max_inflight": 100_000,
                "scheduler": scheduler,
            }
        },
    }
