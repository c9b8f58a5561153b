"""The processes `fairlane serve` started (Envoy, the worker, engines), found by argv."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairlane.bench.cpu import running_descendants

Match = Callable[[list[str]], bool]


def program(name: str) -> Match:
    return lambda argv: Path(argv[0]).name == name


def running(*words: str) -> Match:
    return lambda argv: all(w in argv for w in words)


ENVOY = program("envoy")
WORKER = running("fairlane.worker_entry")


def sim(model: str) -> Match:
    return running("fairlane.engines.sim", model)


def child_pid(stack: Any, match: Match) -> int:
    """The one live descendant of `fairlane serve` whose argv matches."""
    found = [pid for pid, argv in running_descendants(stack.process.pid).items() if match(argv)]
    assert len(found) == 1, found
    return found[0]


async def wait_for_new_pid(stack: Any, old: int, match: Match, timeout_s: float = 30) -> int:
    """The pid of the process that replaced ``old`` (within ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pids = [p for p, argv in running_descendants(stack.process.pid).items() if match(argv)]
        if pids and old not in pids:
            return pids[0]
        await asyncio.sleep(0.1)
    raise AssertionError(f"process {old} was not replaced within {timeout_s}s")
