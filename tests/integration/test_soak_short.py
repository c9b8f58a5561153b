"""A 30-second soak (`fairlane bench soak`, docs/reliability.md): one real stack under steady
mixed traffic — streams, non-streaming requests, clients that hang up mid-stream, an
unknown model, malformed bodies — must lose no request, keep every process's memory,
file descriptors and threads flat, and end with nothing in flight.

Nothing here depends on speed: the checks compare counts and sizes, never latencies, and
the memory tolerance is loose because 30 s of samples are few and early.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fairlane.bench.cpu import alive
from fairlane.bench.soak import KINDS, SoakConfig, soak

pytestmark = pytest.mark.integration

CONFIG = SoakConfig(
    duration_s=30.0,
    warmup_s=10.0,
    interval_s=2.0,
    concurrency=6,
    rss_tolerance=0.25,
    rss_slack_mib=20.0,
    fd_slack=24,
    thread_slack=4,
)


@pytest.mark.timeout(400)
async def test_short_soak_loses_nothing_and_leaks_nothing(tmp_path: Path) -> None:
    result = await soak(CONFIG, tmp_path)

    traffic = result["traffic"]
    for kind in KINDS:  # every kind of request was exercised
        assert traffic["kinds"][kind]["sent"] > 0, f"no {kind} request was sent"
    assert traffic["kinds"]["disconnect"]["outcomes"].get("disconnected", 0) > 0
    failed = [f"{c['check']}: {c['found']}" for c in result["checks"] if not c["ok"]]
    assert not failed, "\n".join(failed)
    assert result["passed"]
    assert traffic["sent"] == traffic["answered"] > 0
    pids = {pid for trend in result["processes"].values() for pid in trend["pids"]}
    assert len(pids) == 4
    assert not [pid for pid in pids if alive(pid)], "a process outlived the stack"
