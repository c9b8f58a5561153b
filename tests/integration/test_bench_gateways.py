"""`fairlane bench noisy-neighbor --gateways 2`, end to end and short: two real gateways,
a Redis and one shared simulator, the spread arm only (~20 s)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_spread_arm_runs_two_gateways_on_shared_state(tmp_path: Path) -> None:
    output = tmp_path / "gateways.json"
    argv = [
        sys.executable, "-P", "-m", "fairlane.cli", "bench", "noisy-neighbor",
        "--gateways", "2", "--arms", "spread", "--duration", "3", "--warmup", "1",
        "--preset", "h100-8b", "--prompt-words", "20", "--max-tokens", "16",
        "--flood-rps", "10", "--no-realtime", "--output", str(output),
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    document = json.loads(output.read_text())
    assert (document["gateways"], document["state"]) == (2, "redis")
    assert document["max_inflight_per_gateway"] == document["max_inflight"] // 2
    spread = document["spread"]
    for tenant in spread["tenants"].values():
        assert tenant["ttft_ms"]["count"] > 0, spread
    assert spread["goodput_ratio"] > 0
    # Each gateway's processes and the shared servers are in the CPU accounting.
    assert {"worker-1", "worker-2", "engine", "redis-server"} <= set(spread["cpu_cores"])
    assert "spread arm" in done.stdout
