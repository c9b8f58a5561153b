"""`fairlane bench soak`: one stack under steady mixed traffic for a long time.

One ``fairlane serve`` with a simulated engine. ``--concurrency`` closed-loop clients,
each pausing 0-2x ``--think`` between requests, send a seeded mix over ``--tenants``
tenants: streaming and non-streaming chat completions, streams the client drops after a
few tokens, requests it leaves 0-20 ms after sending (before any answer), requests for a
model nobody serves (404 expected) and malformed requests (invalid JSON, a field of the
wrong type: 400 expected). Every ``--interval`` seconds it
records RSS (VmRSS), open file descriptors and threads of the supervisor, the worker,
Envoy and the engine, and the worker's in-flight and queue gauges.

Checked at the end, over the samples after ``--warmup``: each process's mean RSS over the
last 20 % of samples is at most ``--rss-tolerance`` x + ``--rss-slack-mib`` above its
mean over the first 20 %; the most fds and threads in the last 20 % are at most
``--fd-slack`` / ``--thread-slack`` above the most in the first 20 %; no process was
replaced; ``fairlane_inflight`` and the queue are back to 0 after the traffic; and no
request was lost: each one sent got a complete answer or the error its kind expects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import random
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fairlane.bench.procwatch import Sampler, loadavg, metric_values, settle_gauges, worker_gauges
from fairlane.bench.records import RequestRecord, read_events
from fairlane.bench.report import RESULTS_DIR, config_of, machine, write_json
from fairlane.bench.soak_report import ROLES, assess, render
from fairlane.bench.stack import (
    FairlaneStack,
    bench_policy,
    free_ports,
    run_until_stopped,
    write_policy,
)
from fairlane.engines.sim.presets import PRESETS

MODEL = "bench-model"
# kind -> share of requests; kinds in EXPECTED must get that status and a JSON error.
KINDS = {
    "stream": 0.40,
    "plain": 0.25,
    "disconnect": 0.10,
    "abandon": 0.05,
    "unknown-model": 0.05,
    "invalid-json": 0.08,
    "invalid-field": 0.07,
}
EXPECTED = {"unknown-model": 404, "invalid-json": 400, "invalid-field": 400}
ANSWERED = ("ok", "expected error", "disconnected")
DISCONNECT_MAX_TOKENS = 512
SETTLE_TIMEOUT_S = 30.0
LEASES = "fairlane_leases_expired_total"  # slots reclaimed without an end record


@dataclass(frozen=True)
class SoakConfig:
    duration_s: float = 600.0
    warmup_s: float | None = None  # None: 10 % of the duration, within 10..60 s
    interval_s: float = 5.0
    concurrency: int = 8
    think_s: float = 0.05
    tenants: int = 3
    preset: str = "h100-8b"
    prompt_words: int = 32
    max_tokens: int = 32
    request_timeout_s: float = 120.0
    rss_tolerance: float = 0.10
    rss_slack_mib: float = 5.0
    fd_slack: int = 16
    thread_slack: int = 2
    seed: int = 1

    @property
    def warmup(self) -> float:
        if self.warmup_s is not None:
            return self.warmup_s
        return min(60.0, max(10.0, 0.1 * self.duration_s))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = SoakConfig()
    parser.add_argument("--duration", type=float, default=d.duration_s, help="s of traffic")
    parser.add_argument("--warmup", type=float, help="s left out of the checks (default: 10%%)")
    parser.add_argument("--interval", type=float, default=d.interval_s, help="s per sample")
    parser.add_argument("--concurrency", type=int, default=d.concurrency)
    parser.add_argument("--think", type=float, default=d.think_s, help="mean s between requests")
    parser.add_argument("--tenants", type=int, default=d.tenants)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=d.preset)
    parser.add_argument("--rss-tolerance", type=float, default=d.rss_tolerance)
    parser.add_argument("--rss-slack-mib", type=float, default=d.rss_slack_mib)
    parser.add_argument("--fd-slack", type=int, default=d.fd_slack)
    parser.add_argument("--thread-slack", type=int, default=d.thread_slack)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "soak.json")


def run(args: argparse.Namespace) -> int:
    config = SoakConfig(
        duration_s=args.duration,
        warmup_s=args.warmup,
        interval_s=args.interval,
        concurrency=args.concurrency,
        think_s=args.think,
        tenants=args.tenants,
        preset=args.preset,
        rss_tolerance=args.rss_tolerance,
        rss_slack_mib=args.rss_slack_mib,
        fd_slack=args.fd_slack,
        thread_slack=args.thread_slack,
        seed=args.seed,
    )
    info = machine()
    with tempfile.TemporaryDirectory(prefix="fairlane-bench-") as tmp:
        document = run_until_stopped(soak(config, Path(tmp)))
    info["loadavg_at_end"] = loadavg()
    document = {"benchmark": "soak", "machine": info, "options": config_of(args), **document}
    write_json(args.output, document)
    print(render(document, args.output.with_suffix(".png")))
    print(f"results: {args.output} and {args.output.with_suffix('.png')}")
    return 0 if document["passed"] else 1


async def soak(config: SoakConfig, work: Path) -> dict[str, Any]:
    """Run the soak against a fresh stack in ``work``; the results and checks."""
    port, admin, control, sim_port = free_ports(4)
    tenants = [f"tenant-{i}" for i in range(1, config.tenants + 1)]
    policy = write_policy(work, _policy(config, tenants, port, admin, control, sim_port))
    stack = FairlaneStack(policy, work / "run", port)
    metrics_url = f"http://127.0.0.1:{control}/metrics"
    try:
        await stack.start()
        async with aiohttp.ClientSession() as session:
            gauges = functools.partial(worker_gauges, session, metrics_url)
            traffic = Traffic(config, f"http://127.0.0.1:{port}", tenants)
            sampler = Sampler(stack.pids, ROLES, gauges)
            watch = asyncio.create_task(sampler.run(config.interval_s))
            try:
                await traffic.run()
            finally:
                watch.cancel()
                await asyncio.gather(watch, return_exceptions=True)
            settle = await settle_gauges(gauges, SETTLE_TIMEOUT_S)
            after = sampler.sample()
            leases = await metric_values(session, metrics_url, (LEASES,))
    finally:
        await stack.stop()
    document = {
        "config": asdict(config) | {"warmup_s": config.warmup},
        "traffic": traffic.summary(),
        "settle": settle,
        "leases_expired": None if leases is None else leases[LEASES],
        "samples": sampler.samples,
        "after": after,
    }
    return document | assess(document, config)


class Traffic:
    """The closed-loop clients and the tally of what each request got."""

    def __init__(self, config: SoakConfig, base_url: str, tenants: list[str]) -> None:
        self.config = config
        self.url = base_url + "/v1/chat/completions"
        self.tenants = tenants
        self.sent: Counter[str] = Counter()
        self.outcomes: dict[str, Counter[str]] = {kind: Counter() for kind in KINDS}
        self.seconds = 0.0

    async def run(self) -> None:
        c = self.config
        timeout = aiohttp.ClientTimeout(total=c.request_timeout_s, sock_connect=10)
        started = time.monotonic()
        stop_at = started + c.duration_s
        async with aiohttp.ClientSession(timeout=timeout) as session:
            tasks = [
                asyncio.create_task(self._client(session, i, stop_at)) for i in range(c.concurrency)
            ]
            _, pending = await asyncio.wait(tasks, timeout=c.duration_s + c.request_timeout_s + 10)
            for task in pending:  # their requests stay unanswered: counted as lost
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self.seconds = time.monotonic() - started

    async def _client(self, session: aiohttp.ClientSession, index: int, stop_at: float) -> None:
        rng = random.Random(self.config.seed * 1_000_003 + index)
        kinds, weights = list(KINDS), list(KINDS.values())
        while time.monotonic() < stop_at:
            kind = rng.choices(kinds, weights)[0]
            self.sent[kind] += 1
            outcome = await self._send(session, kind, rng.choice(self.tenants), rng)
            self.outcomes[kind][outcome] += 1
            await asyncio.sleep(rng.uniform(0.0, 2 * self.config.think_s))

    async def _send(
        self, session: aiohttp.ClientSession, kind: str, tenant: str, rng: random.Random
    ) -> str:
        """One request; its outcome: one of ANSWERED, or what went wrong."""
        headers = {"content-type": "application/json", "x-tenant-id": tenant}
        if kind == "abandon":  # queued, or as its admission is sent: no slot may stay taken
            body = self._body(kind, rng)
            sent = asyncio.ensure_future(session.post(self.url, data=body, headers=headers))
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            sent.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError, OSError):
                (await sent).close()
            return "disconnected"
        try:
            async with session.post(self.url, data=self._body(kind, rng), headers=headers) as r:
                if kind in EXPECTED:
                    return _expected_error(r.status, await r.read(), EXPECTED[kind])
                if r.status != 200:
                    return f"status {r.status}: {(await r.read())[:80]!r}"
                if kind == "plain":
                    choice = json.loads(await r.read())["choices"][0]
                    return "ok" if choice["message"]["content"] else "empty completion"
                return await self._stream(r, tenant, rng.randint(1, 8) if kind != "stream" else 0)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, LookupError) as exc:
            return f"{type(exc).__name__}: {str(exc)[:80]}"

    @staticmethod
    async def _stream(resp: aiohttp.ClientResponse, tenant: str, hang_up_after: int) -> str:
        """Read the SSE stream to ``[DONE]``, or drop it after ``hang_up_after`` tokens."""
        record = RequestRecord(tenant, 0.0)

        def on_token(_: str) -> None:
            if hang_up_after and record.tokens >= hang_up_after:
                raise _HangUp

        try:
            done = await read_events(resp, record, time.monotonic, on_token)
        except _HangUp:
            resp.close()  # drop the connection mid-stream
            return "disconnected"
        return "ok" if done and record.tokens else "stream ended without [DONE]"

    def _body(self, kind: str, rng: random.Random) -> bytes:
        if kind == "invalid-json":
            return rng.choice([b'{"model": "' + MODEL.encode() + b'", "messages": [', b"{]"])
        c = self.config
        prompt = " ".join(f"w{rng.randrange(1000):03d}" for _ in range(c.prompt_words))
        body: dict[str, Any] = {
            "model": "no-such-model" if kind == "unknown-model" else MODEL,
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": DISCONNECT_MAX_TOKENS if kind == "disconnect" else c.max_tokens,
            "stream": {"plain": False, "unknown-model": rng.random() < 0.5}.get(kind, True),
        }
        if kind == "invalid-field":
            body |= rng.choice([{"messages": "not a list"}, {"max_tokens": -1}])
        return json.dumps(body).encode()

    def summary(self) -> dict[str, Any]:
        kinds = {}
        for kind in KINDS:
            outcomes = self.outcomes[kind]
            answered = sum(outcomes[o] for o in ANSWERED)
            kinds[kind] = {
                "sent": self.sent[kind],
                "outcomes": dict(outcomes),
                "answered": answered,
                "lost": self.sent[kind] - answered,
            }
        sent = sum(self.sent.values())
        return {
            "seconds": self.seconds,
            "sent": sent,
            "answered": sum(k["answered"] for k in kinds.values()),
            "lost": sum(k["lost"] for k in kinds.values()),
            "requests_per_s": sent / self.seconds if self.seconds else None,
            "kinds": kinds,
        }


class _HangUp(Exception):
    """Raised from the token callback to leave a stream early."""


def _expected_error(status: int, body: bytes, expected: int) -> str:
    try:
        error = json.loads(body)["error"]
    except (ValueError, LookupError, TypeError):
        error = None
    if status == expected and isinstance(error, dict):
        return "expected error"
    return f"status {status} (expected {expected} JSON error): {body[:80]!r}"


def _policy(
    config: SoakConfig, tenants: list[str], port: int, admin: int, control: int, sim_port: int
) -> dict[str, Any]:
    engine = {"kind": "sim", "preset": config.preset, "port": sim_port, "models": [MODEL]}
    return bench_policy((port, admin, control), {t: {} for t in tenants}, engine)
