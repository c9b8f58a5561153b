"""One engine as the supervisor tracks it, and what it takes to start one."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from fairlane.engine_config import EngineConfig
from fairlane.engines.health import Health
from fairlane.engines.process import ManagedProcess
from fairlane.engines.spec import EngineSpec


@dataclass
class EngineRun:
    spec: EngineSpec
    process: ManagedProcess | None
    # idle (lazy, not loaded) | starting | up | restarting (after a crash) | down
    state: str = "starting"
    started_at: float = 0.0
    failures: int = 0  # clear probe failures in a row (error status, refused)
    silent_since: float | None = None  # first of the unanswered probes in a row
    untrusted: bool = False  # its last probe failed the certificate check (logged once)
    probe: asyncio.Task[Health] | None = None  # out, not answered yet
    loads: int = 0
    evictions: int = 0
    load_seconds: deque[float] = field(default_factory=lambda: deque(maxlen=64))
    loading_since: float | None = None
    # Removed or changed by a reload, draining before it stops: held `down` (its probes,
    # which the old process still answers, must not route new requests to it).
    leaving: bool = False

    @property
    def resident(self) -> bool:
        return self.process is not None and self.process.running


# What it takes to start an engine: a change here restarts it; anything else in its
# config (capacity, queue, scheduler) is the worker's business and applies live.
LAUNCH_FIELDS = {
    "kind",
    "models",
    "url",
    "ca_file",  # an external engine is probed and published again with the new trust
    "host",
    "port",
    "preset",
    "model_path",
    "adapters",
    "args",
    "env",
    "inject_priority",
    "isolate_prefills",
    "announce",
    "gpu_memory_gb",
    "lazy",
    "pinned",
    "nice",
}


def launch_key(config: EngineConfig) -> dict[str, Any]:
    return config.model_dump(include=LAUNCH_FIELDS)
