"""Keep the engines running and tell Envoy and the worker where the healthy ones are.

One loop: start managed engines, probe every engine's health, restart crashed ones with
backoff, and when any engine's state changes rewrite the CDS file (Envoy routes only to
healthy engines) and ``engines.json`` (the worker refuses or queues for the others).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from fairlane.engines.health import probe
from fairlane.engines.process import ManagedProcess
from fairlane.engines.spec import EngineSpec, engine_spec
from fairlane.envoy.bootstrap import render_cds, write_json_atomically
from fairlane.policy import Policy
from fairlane.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class EngineRun:
    spec: EngineSpec
    process: ManagedProcess | None
    state: str = "starting"  # starting | up | down
    started_at: float = 0.0
    failures: int = 0


class EngineSupervisor:
    def __init__(self, policy: Policy, run_dir: RunDir, interval_s: float = 0.5) -> None:
        self.run_dir = run_dir
        self.interval_s = interval_s
        self.engines: dict[str, EngineRun] = {}
        self._version = 0
        self._policy = policy
        self._wake = asyncio.Event()

    def _new_run(self, name: str, policy: Policy) -> EngineRun:
        spec = engine_spec(name, policy.engines[name])
        process = None
        if spec.managed:
            process = ManagedProcess(
                f"engine {name}", spec.argv, self.run_dir.log(f"engine-{name}"), spec.env
            )
        return EngineRun(spec, process)

    async def start(self) -> None:
        for name in self._policy.engines:
            self.engines[name] = self._new_run(name, self._policy)
        self.publish()
        for run in self.engines.values():
            if run.process is not None:
                await run.process.start()
            run.started_at = time.monotonic()

    async def apply(self, policy: Policy) -> None:
        """Start engines added to the policy, stop removed or changed ones."""
        for name, run in list(self.engines.items()):
            if policy.engines.get(name) != run.spec.config:
                if run.process is not None:
                    await run.process.stop()
                del self.engines[name]
        for name in policy.engines:
            if name not in self.engines:
                run = self._new_run(name, policy)
                self.engines[name] = run
                if run.process is not None:
                    await run.process.start()
                run.started_at = time.monotonic()
        self._policy = policy
        self.publish()

    async def run(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                changed = False
                for run in list(self.engines.values()):
                    changed |= await self._check(session, run)
                if changed:
                    self.publish()
                self._wake.clear()
                try:
                    async with asyncio.timeout(self.interval_s):
                        await self._wake.wait()
                except TimeoutError:
                    pass

    async def _check(self, session: aiohttp.ClientSession, run: EngineRun) -> bool:
        process, spec = run.process, run.spec
        if process is not None and not process.running:
            await process.tend()
            if process.running:
                run.started_at = time.monotonic()
                run.failures = 0
                return self._set(run, "starting")
            return self._set(run, "down")
        healthy = await probe(session, spec.host, spec.port, spec.health_path)
        if healthy:
            run.failures = 0
            return self._set(run, "up")
        run.failures += 1
        if run.state == "up" and run.failures >= 2:
            return self._set(run, "down")
        if (
            run.state == "starting"
            and process is not None
            and time.monotonic() - run.started_at > spec.config.startup_timeout_s
        ):
            log.error(
                "engine %s not healthy after %.0fs: restarting it",
                spec.name,
                spec.config.startup_timeout_s,
            )
            await process.stop()
            return False
        if run.state == "starting" and process is None and run.failures >= 3:
            return self._set(run, "down")  # an external engine that does not answer
        return False

    def _set(self, run: EngineRun, state: str) -> bool:
        if run.state == state:
            return False
        log.info("engine %s: %s -> %s", run.spec.name, run.state, state)
        run.state = state
        return True

    def publish(self) -> None:
        """Rewrite the CDS file and engines.json from the current states."""
        self._version += 1
        endpoints = {
            name: (run.spec.host, run.spec.port) if run.state == "up" else None
            for name, run in self.engines.items()
        }
        write_json_atomically(self.run_dir.cds, render_cds(endpoints, self._version))
        write_json_atomically(
            self.run_dir.engine_states,
            {
                "version": self._version,
                "engines": {
                    name: {
                        "state": run.state,
                        "host": run.spec.host,
                        "port": run.spec.port,
                        "restarts": run.process.restarts if run.process else 0,
                    }
                    for name, run in self.engines.items()
                },
            },
        )

    async def stop(self, grace_s: float) -> None:
        await asyncio.gather(
            *(run.process.stop(grace_s) for run in self.engines.values() if run.process)
        )
