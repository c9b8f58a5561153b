"""Tell Envoy, then the worker, where the engines are and what state each is in."""

from __future__ import annotations

import asyncio
from typing import Any

from fairlane.engines.run import EngineRun
from fairlane.engines.upstream_tls import ca_bundle
from fairlane.envoy.admin import wait_for_cds
from fairlane.envoy.bootstrap import render_cds, write_json_atomically
from fairlane.rundir import RunDir

CDS_APPLY_TIMEOUT_S = 2.0  # Envoy applies a CDS file in milliseconds; past this, go on


class StatePublisher:
    """Writes the CDS file, then engines.json, from the engines' current states.

    The worker dispatches to an engine as soon as engines.json says it is up, so Envoy
    must have its endpoint first: wait (bounded) until Envoy reports it has applied this
    CDS version. One publish at a time, so the two files never disagree in the other
    order.
    """

    def __init__(self, run_dir: RunDir, envoy_admin: str) -> None:
        self.run_dir = run_dir
        self.envoy_admin = envoy_admin
        self.version = 0
        self._lock = asyncio.Lock()

    async def publish(self, engines: dict[str, EngineRun]) -> None:
        async with self._lock:
            self.version += 1
            version = self.version
            endpoints = {
                name: (run.spec.host, run.spec.port) if run.state == "up" else None
                for name, run in engines.items()
            }
            states = _states_document(engines, version)
            tls = {
                name: (run.spec.host, bundle)
                for name, run in engines.items()
                if run.spec.config.https and (bundle := ca_bundle(run.spec.config))
            }
            write_json_atomically(self.run_dir.cds, render_cds(endpoints, version, tls))
            await wait_for_cds(self.envoy_admin, version, CDS_APPLY_TIMEOUT_S)
            write_json_atomically(self.run_dir.engine_states, states)


def _states_document(engines: dict[str, EngineRun], version: int) -> dict[str, Any]:
    return {
        "version": version,
        "engines": {
            name: {
                "state": run.state,
                "host": run.spec.host,
                "port": run.spec.port,
                "url": run.spec.base_url,  # where the worker reads its /metrics
                "lazy": run.spec.config.lazy,
                "serves": list(run.spec.config.served),  # the names it was started for
                "restarts": run.process.restarts if run.process else 0,
                "crash_loop": bool(run.process and run.process.crash_looping),
                "loads": run.loads,
                "evictions": run.evictions,
                "load_seconds": list(run.load_seconds),
            }
            for name, run in engines.items()
        },
    }
