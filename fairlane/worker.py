"""The worker process: ext_proc + access-log gRPC service and the control HTTP server.

It holds all tenant state (soft: a restart begins counters from zero). Engine health
comes from the supervisor through ``engines.json`` in the run directory, which the
worker re-reads when it changes, so a restarted worker picks it up at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from aiohttp import web

from fairlane.control import build_control_app
from fairlane.engine_config import EngineConfig
from fairlane.engines.upstream_tls import client_ssl
from fairlane.envoy.bootstrap import write_json_atomically
from fairlane.envoy.common import MAX_DOWNSTREAM_CONNECTIONS
from fairlane.extproc.announce import Announcer
from fairlane.extproc.capacity import AdaptiveLimit, EngineLoad, parse_engine_metrics
from fairlane.extproc.engine_health import reported_state
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.observe import GatewayCollector
from fairlane.extproc.runtime import compile_policy
from fairlane.extproc.server import add_servicers
from fairlane.extproc.shared import redacted
from fairlane.extproc.shared.counter_sync import CounterSync
from fairlane.extproc.shared.redis_limits import RedisRateLimiter
from fairlane.policy import Policy
from fairlane.policy_file import PolicyError, load_policy
from fairlane.reload import PolicyWatcher, file_signature
from fairlane.rundir import RunDir

log = logging.getLogger("fairlane.worker")

GRPC_MAX_MESSAGE = 64 * 1024 * 1024
LEASE_MAX_AGE_S = 6 * 3600.0  # a lease whose end record never came is reclaimed


class Worker:
    def __init__(self, policy_path: Path, run_dir: RunDir) -> None:
        self.policy_path = policy_path
        self.run_dir = run_dir
        policy = load_policy(policy_path)
        self.metrics = Metrics()
        self.gateway = Gateway(compile_policy(policy, 1), self.metrics)
        self.engine_info: dict[str, dict[str, Any]] = {}
        self.announcer = Announcer(self.metrics)
        self.metrics.add_collector(GatewayCollector(self.gateway, self.engine_info))
        self.watcher = PolicyWatcher(
            policy_path, policy.listener, self._apply_policy, self._reject_policy
        )
        self._stop = asyncio.Event()

    def _apply_policy(self, policy: Policy) -> None:
        generation = self.gateway.runtime.generation + 1
        if policy.state != self.gateway.runtime.policy.state:
            log.warning("the state section changed: restart the worker to apply it")
        self.gateway.apply(compile_policy(policy, generation))
        self._set_engine_states()
        if self.gateway.counter_sync is not None:
            self.gateway.counter_sync.watch(self.gateway.runtime.pools)
        log.info("policy generation %d is live", generation)

    def _reject_policy(self, _: PolicyError) -> None:
        self.metrics.config_reload_failures.inc()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.watcher.request_reload)
        loop.add_signal_handler(signal.SIGUSR1, self.watcher.request_check)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        socket_path = self.run_dir.worker_socket
        socket_path.unlink(missing_ok=True)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", GRPC_MAX_MESSAGE),
                ("grpc.max_send_message_length", GRPC_MAX_MESSAGE),
                # gRPC drops calls at random once 1,000 wait for the event loop to take
                # them (3,000: all): a burst of requests would get 503s instead of
                # Fairlane's own 429s. Bounded instead as Envoy bounds its connections.
                ("grpc.server.max_pending_requests", MAX_DOWNSTREAM_CONNECTIONS),
                ("grpc.server.max_pending_requests_hard_limit", MAX_DOWNSTREAM_CONNECTIONS),
            ]
        )
        add_servicers(server, self.gateway, self.announcer)
        server.add_insecure_port(f"unix:{socket_path}")
        await server.start()
        listener = self.gateway.runtime.policy.listener
        runner = web.AppRunner(build_control_app(self.gateway), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", listener.control_port).start()
        tasks = [*self._start_shared_state()]
        tasks += [
            asyncio.create_task(self.watcher.run()),
            asyncio.create_task(self._follow_engine_states()),
            asyncio.create_task(self._expire_leases()),
            asyncio.create_task(self._publish_demand()),
            asyncio.create_task(self._adapt_capacity()),
        ]
        print(
            f"fairlane-worker ready (grpc unix:{socket_path}, control "
            f"127.0.0.1:{listener.control_port})",
            flush=True,
        )
        try:
            await self._stop.wait()
        finally:
            for task in tasks:
                task.cancel()
            await server.stop(grace=2)
            await runner.cleanup()
            self.announcer.close()
            for client in (self.gateway.shared_limiter, self.gateway.counter_sync):
                if client is not None:
                    await client.close()

    def _start_shared_state(self) -> list[asyncio.Task[None]]:
        """state: redis — exact shared buckets, and fair counters synced across gateways."""
        state = self.gateway.runtime.policy.state
        if state.kind != "redis":
            return []
        gateway = self.gateway
        gateway.shared_limiter = RedisRateLimiter(state.url, timeout_s=state.timeout_ms / 1000)
        sync = gateway.counter_sync = CounterSync(state.url, interval_s=state.sync_interval_s)
        sync.watch(gateway.runtime.pools)

        def apply(pool: str, tenant: str, delta: float) -> None:
            target = gateway.pools.get(pool)
            if target is not None:
                target.scheduler.charge_external(tenant, delta, time.monotonic())

        log.info("tenant state shared through %s", redacted(state.url))
        return [asyncio.create_task(sync.run(apply))]

    async def _follow_engine_states(self) -> None:
        path = self.run_dir.engine_states
        seen: tuple[int, int, int] | None = None
        while True:
            signature = file_signature(path)
            if signature is not None and signature != seen:
                seen = signature
                with contextlib.suppress(OSError, ValueError):
                    self._apply_engine_states(json.loads(path.read_text()))
            await asyncio.sleep(0.05)

    def _apply_engine_states(self, document: dict[str, Any]) -> None:
        self.engine_info.clear()
        self.engine_info.update(document.get("engines", {}))
        self._set_engine_states()

    def _set_engine_states(self) -> None:
        """The supervisor's last report, against the policy now live here."""
        engines = self.gateway.runtime.policy.engines
        for engine, info in self.engine_info.items():
            self.gateway.health.set_state(engine, reported_state(info, engines.get(engine)))
        self.announcer.listen_at(
            {
                engine: (info["host"], info["port"])
                for engine, info in self.engine_info.items()
                if engine in engines and engines[engine].announces
            }
        )

    async def _publish_demand(self) -> None:
        """Tell the supervisor which engines are asked for (lazy loading, eviction)."""
        last: dict[str, dict[str, float]] | None = None
        while True:
            demand = self.gateway.demand()
            if demand != last:
                await asyncio.to_thread(write_json_atomically, self.run_dir.demand, demand)
                last = demand
            await asyncio.sleep(0.25)

    async def _adapt_capacity(self) -> None:
        """Poll each adaptive engine's /metrics and move its in-flight limit."""
        limits: dict[str, AdaptiveLimit] = {}
        async with aiohttp.ClientSession() as session:
            while True:
                policy = self.gateway.runtime.policy
                interval = 1.0
                for name, engine in policy.engines.items():
                    info = self.engine_info.get(name)
                    pool = self.gateway.pool_of(name)
                    if engine.adaptive is None or info is None or pool is None:
                        limits.pop(name, None)
                        continue
                    interval = min(interval, engine.adaptive.interval_s)
                    limit = limits.get(name)
                    if limit is None or limit.config != engine.adaptive:
                        limit = limits[name] = AdaptiveLimit(engine.adaptive, engine.max_inflight)
                    limit.ceiling = engine.max_inflight
                    load = await _engine_load(session, info, engine)
                    if load is not None and info.get("state") == "up":
                        replica = pool.replicas[name]
                        pool.set_capacity(name, limit.update(load, replica.inflight))
                await asyncio.sleep(interval)

    async def _expire_leases(self) -> None:
        while True:
            await asyncio.sleep(30)
            self.gateway.expire_leases(LEASE_MAX_AGE_S)


async def _engine_load(
    session: aiohttp.ClientSession, info: dict[str, Any], engine: EngineConfig
) -> EngineLoad | None:
    url = f"{info['url']}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with session.get(url, timeout=timeout, ssl=client_ssl(engine)) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
    # vLLM's metrics page is large; parse it off the event loop.
    return await asyncio.to_thread(parse_engine_metrics, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fairlane-worker")
    parser.add_argument("--config", required=True, type=Path)
    parser.add_argument("--run-dir", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        worker = Worker(args.config, RunDir(args.run_dir))
    except PolicyError as exc:
        print(exc)
        return 2
    asyncio.run(worker.run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
