"""Keep the engines running and tell Envoy and the worker where the healthy ones are.

One loop: start managed engines, probe every engine's health, restart crashed ones with
backoff, load lazy engines when the worker reports requests waiting for them (unloading
the least valuable idle engines if the GPU memory budget requires), and when any state
changes rewrite the CDS file (Envoy routes only to healthy engines) and ``engines.json``
(the worker refuses, or queues, requests for the others).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import replace
from typing import Any

import aiohttp

from fairlane.engines.health import Health, probe
from fairlane.engines.models import Resident, choose_evictions
from fairlane.engines.process import ManagedProcess
from fairlane.engines.publish import StatePublisher
from fairlane.engines.run import EngineRun, launch_key
from fairlane.engines.spec import engine_spec
from fairlane.engines.upstream_tls import ca_bundle, client_ssl
from fairlane.envoy.admin import admin_url
from fairlane.policy import Policy
from fairlane.reload import file_signature
from fairlane.rundir import RunDir

log = logging.getLogger(__name__)

# How often an engine in a crash loop is tried again (Kubernetes' cap on its
# CrashLoopBackOff): a cause that goes away by itself heals with no operator.
CRASH_LOOP_RETRY_S = 300.0


class EngineSupervisor:
    def __init__(
        self,
        policy: Policy,
        run_dir: RunDir,
        interval_s: float = 0.5,
        crash_loop_retry_s: float = CRASH_LOOP_RETRY_S,
    ) -> None:
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.crash_loop_retry_s = crash_loop_retry_s
        self.engines: dict[str, EngineRun] = {}
        self.publisher = StatePublisher(run_dir, admin_url(policy.listener))
        self._policy = policy
        self._demand: dict[str, dict[str, Any]] = {}
        self._demand_seen: tuple[int, int, int] | None = None

    def _new_run(self, name: str, policy: Policy) -> EngineRun:
        listener = policy.listener
        taken = {listener.port, listener.admin_port, listener.control_port}
        taken |= {engine.port for engine in policy.engines.values() if engine.port}
        spec = engine_spec(name, policy.engines[name], avoid=taken)
        process = None
        if spec.managed:
            log_path = self.run_dir.log(f"engine-{name}")
            # Not a lazy engine: a timed start could break the GPU memory budget that
            # loading on demand keeps (another may have been loaded meanwhile).
            retry = None if spec.config.lazy else self.crash_loop_retry_s
            nice = spec.config.cpu_nice
            process = ManagedProcess(
                f"engine {name}", spec.argv, log_path, spec.env, loop_retry_s=retry, nice=nice
            )
        return EngineRun(spec, process)

    async def start(self) -> None:
        for name in self._policy.engines:
            self.engines[name] = self._new_run(name, self._policy)
        for run in self.engines.values():
            if run.spec.config.lazy:
                run.state = "idle"
        await self.publish()
        for run in self.engines.values():
            if not run.spec.config.lazy:
                await self._launch(run)

    async def apply(self, policy: Policy) -> None:
        """Start engines added to the policy; drain, then stop, removed or changed ones."""
        leaving = [
            run
            for name, run in self.engines.items()
            if name not in policy.engines
            or launch_key(policy.engines[name]) != launch_key(run.spec.config)
        ]
        for run in leaving:
            run.leaving = True
            self._set(run, "down")  # the worker stops routing to it
        await self.publish()
        await self._drain([run.spec.name for run in leaving], policy.listener.drain_grace_s)
        for run in leaving:
            if run.process is not None:
                await run.process.stop()
            del self.engines[run.spec.name]
        self._policy = policy
        for name, config in policy.engines.items():
            if name in self.engines:
                # Admission settings (capacity, queue, scheduler) change without a restart.
                run = self.engines[name]
                run.spec = replace(run.spec, config=config)
                if run.process is not None:
                    # A reload is the operator's word that a crash loop's cause is fixed:
                    # try again, without restarting the healthy engines.
                    run.process.rearm()
                continue
            run = self.engines[name] = self._new_run(name, policy)
            if run.spec.config.lazy:
                run.state = "idle"
            else:
                await self._launch(run)
        await self.publish()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            try:
                while True:
                    self._read_demand()
                    await self._probe_all(session)
                    changed = False
                    for run in list(self.engines.values()):
                        if not run.leaving:
                            changed |= await self._check(run, self._probe_result(run))
                    if changed:
                        await self.publish()
                    await asyncio.sleep(self.interval_s)
            finally:
                for run in self.engines.values():
                    if run.probe is not None:
                        run.probe.cancel()

    async def _probe_all(self, session: aiohttp.ClientSession) -> None:
        """Probe every engine at once and wait up to a tick: an engine slow to answer
        keeps its probe out across ticks and delays neither the others nor the loop."""
        for run in self.engines.values():
            if run.probe is None and run.state != "idle" and not run.leaving:
                spec = run.spec
                run.probe = asyncio.create_task(
                    probe(
                        session,
                        spec.base_url + spec.health_path,
                        spec.config.health.timeout_s,
                        client_ssl(spec.config),
                    )
                )
        out = [run.probe for run in self.engines.values() if run.probe is not None]
        if out:
            await asyncio.wait(out, timeout=self.interval_s)

    @staticmethod
    def _probe_result(run: EngineRun) -> Health | None:
        """The answer of the engine's probe if it is back (None: none to act on yet)."""
        if run.probe is None or not run.probe.done():
            return None
        health, run.probe = run.probe.result(), None
        return health

    async def _drain(self, names: list[str], grace_s: float) -> None:
        """Wait until the worker reports nothing in flight on these engines (bounded)."""
        deadline = time.monotonic() + grace_s
        while names and time.monotonic() < deadline:
            self._read_demand()
            if not any(self._demand.get(n, {}).get("inflight") for n in names):
                return
            await asyncio.sleep(0.2)

    async def _launch(self, run: EngineRun) -> None:
        if run.process is not None:
            await run.process.start()
        self._restarted(run)

    @staticmethod
    def _restarted(run: EngineRun) -> None:
        run.started_at = time.monotonic()
        run.failures, run.silent_since = 0, None

    async def _check(self, run: EngineRun, health: Health | None) -> bool:
        process, spec = run.process, run.spec
        if run.state == "idle":
            return await self._load_if_wanted(run)
        if process is not None and not process.running:
            await process.tend()
            if process.running:
                self._restarted(run)
                # Back after a crash: clients get a prompt 503 + Retry-After while it
                # loads, rather than queueing for minutes behind a cold start.
                return self._set(run, "restarting")
            return self._set(run, "down")
        if health is None:
            return False
        if health is Health.UNTRUSTED and not run.untrusted:
            log.error(
                "engine %s: the certificate of %s did not verify against %s (is that the "
                "CA that signed it, and does it name the url's host?)",
                spec.name,
                spec.base_url,
                ca_bundle(spec.config),
            )
        run.untrusted = health is Health.UNTRUSTED
        if health is Health.OK:
            run.failures, run.silent_since = 0, None
            if process is not None:
                process.healthy()
            if run.loading_since is not None and run.state != "up":
                run.load_seconds.append(time.monotonic() - run.loading_since)
                run.loading_since = None
            return self._set(run, "up")
        if health is Health.SILENT:
            run.silent_since = run.silent_since or time.monotonic()
        else:
            run.failures += 1
        if run.state == "up" and (run.failures >= 2 or self._silent_too_long(run)):
            return self._set(run, "down")
        starting_for = time.monotonic() - run.started_at
        if run.state in ("starting", "restarting") and process is not None:
            if starting_for > spec.config.startup_timeout_s:
                log.error(
                    "engine %s not healthy after %.0fs: restarting it",
                    spec.name,
                    spec.config.startup_timeout_s,
                )
                await process.stop()
            return False
        if run.state == "starting" and (run.failures >= 3 or self._silent_too_long(run)):
            return self._set(run, "down")  # an external engine that does not answer
        return False

    @staticmethod
    def _silent_too_long(run: EngineRun) -> bool:
        if run.silent_since is None:
            return False
        return time.monotonic() - run.silent_since >= run.spec.config.health.unhealthy_after_s

    async def _load_if_wanted(self, run: EngineRun) -> bool:
        name = run.spec.name
        if not self._demand.get(name, {}).get("queued"):
            return False
        need = run.spec.config.gpu_memory_gb
        victims = choose_evictions(
            self._residents(), need, self._policy.gpu_memory_budget_gb, time.time()
        )
        if victims is None:
            log.warning("engine %s is wanted but %.0f GB cannot be freed now", name, need)
            return False
        for victim in victims:
            await self._evict(self.engines[victim])
        log.info("loading engine %s on demand", name)
        run.loads += 1
        run.loading_since = time.monotonic()
        await self._launch(run)
        return self._set(run, "starting")

    async def _evict(self, run: EngineRun) -> None:
        log.info(
            "unloading engine %s to free %.0f GB", run.spec.name, run.spec.config.gpu_memory_gb
        )
        if run.process is not None:
            await run.process.stop()
        run.evictions += 1
        self._set(run, "idle")
        await self.publish()  # Envoy stops routing to it before anything else starts

    def _residents(self) -> list[Resident]:
        out = []
        for name, run in self.engines.items():
            if not run.resident:
                continue
            demand = self._demand.get(name, {})
            config = run.spec.config
            out.append(
                Resident(
                    name,
                    config.gpu_memory_gb,
                    config.pinned or not config.lazy,
                    int(demand.get("requests", 0)),
                    float(demand.get("last", 0.0)),
                    bool(demand.get("inflight") or demand.get("queued")),
                )
            )
        return out

    def _read_demand(self) -> None:
        signature = file_signature(self.run_dir.demand)
        if signature is None or signature == self._demand_seen:
            return
        self._demand_seen = signature
        with contextlib.suppress(OSError, ValueError):
            self._demand = dict(json.loads(self.run_dir.demand.read_text()))

    def _set(self, run: EngineRun, state: str) -> bool:
        if run.state == state or (run.leaving and state != "down"):
            return False
        log.info("engine %s: %s -> %s", run.spec.name, run.state, state)
        run.state = state
        return True

    async def publish(self) -> None:
        await self.publisher.publish(self.engines)

    async def stop(self, grace_s: float) -> None:
        await asyncio.gather(
            *(run.process.stop(grace_s) for run in self.engines.values() if run.process)
        )
