"""`fairlane bench load`: one stack's throughput, TTFT and errors at rising concurrency.

One ``fairlane serve`` with a simulated engine (``--preset``, ``max_inflight`` 64 and the
default queue). Each step runs closed-loop streaming chat completions at one concurrency
for a warm-up and ``--duration`` seconds, requests spread round-robin over ``--tenants``
tenants. A client answered 429/503 with ``Retry-After`` waits that long (at most 5 s)
before its next request, as the OpenAI SDK does. Per step: completed requests/s and
output tokens/s (requests and tokens that ended inside the window), TTFT p50/p99, errors
by kind, the worker's in-flight and queue gauges, and CPU ms per request of the worker,
Envoy, the engine and the supervisor (from /proc, less their idle rate).

The saturation point is the last step before the first one that adds less than 10 % of
throughput over the best step before it; the latency knee, the last step before the first
whose TTFT p99 is more than 3x the previous step's. Checked: no error at or below the
saturation point; above it only 429/503 with ``Retry-After``; no client timeout
(``--timeout``, default 120 s) anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from fairlane.bench.cpu import CpuSnapshot
from fairlane.bench.load_report import LoadRecord, assess, render, summarize_step
from fairlane.bench.loadgen import Client, Workload, closed_loop
from fairlane.bench.procwatch import loadavg, worker_gauges
from fairlane.bench.realtime import add_realtime_argument, realtime
from fairlane.bench.records import RequestRecord, read_events
from fairlane.bench.report import RESULTS_DIR, config_of, machine, write_json
from fairlane.bench.stack import (
    FairlaneStack,
    bench_policy,
    free_ports,
    run_until_stopped,
    write_policy,
)
from fairlane.engines.sim.presets import PRESETS

MODEL = "bench-model"
RETRY_AFTER_CAP_S = 5.0
IDLE_SAMPLE_S = 5.0
WARM_S = 3.0
SETTLE_S = 2.0
GAUGE_INTERVAL_S = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="h100-8b")
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 4, 16, 64, 128, 256])
    parser.add_argument("--duration", type=float, default=15.0, help="measured s per step")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured s per step")
    parser.add_argument("--tenants", type=int, default=4)
    parser.add_argument("--max-inflight", type=int, default=64, help="the engine's limit")
    parser.add_argument("--prompt-words", type=int, default=64, help="~1.25 tokens each")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=120.0, help="client timeout, s")
    add_realtime_argument(parser)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "load.json")


class TenantsClient(Client):
    """A Client that spreads requests round-robin over tenants (whatever tenant the loop
    names) and keeps the ``Retry-After`` of error answers, honouring it before returning."""

    def __init__(self, workload: Workload, tenants: list[str]) -> None:
        super().__init__(workload)
        self._tenants = itertools.cycle(tenants)

    async def request(
        self, tenant: str, clock: Callable[[], float], on_token: Callable[[str], None]
    ) -> RequestRecord:
        assert self._session is not None, "use the Client as an async context manager"
        record = LoadRecord(next(self._tenants), clock())
        headers = {"content-type": "application/json", "x-tenant-id": record.tenant}
        try:
            body = self._rng.choice(self._bodies)
            async with self._session.post(self._url, data=body, headers=headers) as resp:
                record.status = resp.status
                if resp.status != 200:
                    record.retry_after = resp.headers.get("retry-after")
                    record.error = (await resp.read())[:200].decode("utf-8", "replace")
                elif not await read_events(resp, record, clock, on_token):
                    record.error = "stream ended without [DONE]"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = clock()
        if record.retry_after is not None:
            await asyncio.sleep(min(RETRY_AFTER_CAP_S, _seconds(record.retry_after)))
        return record


def _seconds(retry_after: str) -> float:
    try:
        return max(0.0, float(retry_after))
    except ValueError:
        return RETRY_AFTER_CAP_S


def run(args: argparse.Namespace) -> int:
    return run_until_stopped(_run(args))


async def _run(args: argparse.Namespace) -> int:
    info = machine()
    tenants = [f"tenant-{i}" for i in range(1, args.tenants + 1)]
    port, admin, control, sim_port = free_ports(4)
    steps: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        work = Path(tmp)
        policy = write_policy(work, _policy(args, tenants, port, admin, control, sim_port))
        stack = FairlaneStack(policy, work / "run", port)
        try:
            await stack.start()
            pids, url = stack.pids(), f"http://127.0.0.1:{port}"
            # Unreported: connections, caches and Envoy's start-up work settle first.
            warm = argparse.Namespace(**vars(args) | {"warmup": 0.0, "duration": WARM_S})
            await _step(warm, tenants, url, pids, {}, 4, control)
            await asyncio.sleep(SETTLE_S)
            idle = await _idle_rates(pids)
            for concurrency in args.concurrency:
                steps.append(await _step(args, tenants, url, pids, idle, concurrency, control))
                print(_progress(steps[-1]), flush=True)
        finally:
            await stack.stop()
    info["loadavg_at_end"] = loadavg()
    document: dict[str, Any] = {
        "benchmark": "load",
        "machine": info,
        "config": config_of(args),
        "tenants": tenants,
        "method": "closed loop per step, one stack; CPU from /proc less idle rates",
        "idle_cpu_ms_per_s": {role: rate * 1000.0 for role, rate in idle.items()},
        "steps": steps,
    }
    document |= assess(steps)
    write_json(args.output, document)
    print(render(document, args.output.with_suffix(".png")))
    print(f"results: {args.output} and {args.output.with_suffix('.png')}")
    if not document["passed"]:
        return 1
    return 0 if all(s["lag_ok"] for s in steps) else 3


async def _idle_rates(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds per second each process uses with no load (timers, polling)."""
    before = CpuSnapshot.take(pids)
    await asyncio.sleep(IDLE_SAMPLE_S)
    used = CpuSnapshot.take(pids).since(before)
    return {role: used[role] / used["wall"] for role in pids}


async def _step(
    args: argparse.Namespace,
    tenants: list[str],
    url: str,
    pids: dict[str, int],
    idle: dict[str, float],
    concurrency: int,
    control_port: int,
) -> dict[str, Any]:
    workload = Workload(
        url,
        MODEL,
        args.prompt_words,
        args.max_tokens,
        request_timeout_s=args.timeout,
    )
    gauges: list[dict[str, float]] = []
    async with aiohttp.ClientSession() as session:
        sampler = asyncio.create_task(
            _sample(session, f"http://127.0.0.1:{control_port}/metrics", gauges)
        )
        before = CpuSnapshot.take(pids)
        try:
            async with TenantsClient(workload, tenants) as client:
                with realtime(args.realtime) as used:
                    result = await closed_loop(
                        client, "mixed", concurrency, args.warmup, args.duration, args.timeout + 10
                    )
        finally:
            sampler.cancel()
            await asyncio.gather(sampler, return_exceptions=True)
        cpu = CpuSnapshot.take(pids).since(before)
    return summarize_step(concurrency, result, cpu, idle, gauges) | {"realtime": used}


async def _sample(session: aiohttp.ClientSession, url: str, into: list[dict[str, float]]) -> None:
    while True:
        values = await worker_gauges(session, url)
        if values is not None:
            into.append(values)
        await asyncio.sleep(GAUGE_INTERVAL_S)


def _progress(step: dict[str, Any]) -> str:
    errors = sum(step["errors"].values())
    return (
        f"C={step['concurrency']}: {step['completed_rps']:.1f} req/s, "
        f"TTFT p99 {step['ttft_ms']['p99'] or 0:.0f} ms, {errors} errors"
    )


def _policy(
    args: argparse.Namespace,
    tenants: list[str],
    port: int,
    admin: int,
    control: int,
    sim_port: int,
) -> dict[str, Any]:
    engine = {
        "kind": "sim",
        "preset": args.preset,
        "port": sim_port,
        "models": [MODEL],
        "max_inflight": args.max_inflight,
    }
    return bench_policy(
        (port, admin, control),
        {t: {} for t in tenants},
        engine,
        unknown_tenants={"mode": "reject"},
    )
