"""Envoy's own check of what Fairlane renders (`envoy --mode validate`)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from fairlane.envoy.bootstrap import render_bootstrap, write_json_atomically
from fairlane.policy import Policy
from fairlane.policy_file import load_policy
from fairlane.rundir import RunDir
from fairlane.serve import envoy_binary

QUICKSTART = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"


def validate(bootstrap: Path) -> subprocess.CompletedProcess[str]:
    """Envoy loads the bootstrap (and the files it names) without serving it."""
    return subprocess.run(
        [
            envoy_binary(),
            "--mode",
            "validate",
            "-c",
            str(bootstrap),
            "--disable-hot-restart",
            "--use-dynamic-base-id",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def validate_rendered(
    directory: Path, cds: dict[str, Any], policy: Policy | None = None
) -> subprocess.CompletedProcess[str]:
    """The bootstrap of ``policy`` (the quickstart's by default) with these engine
    clusters, written into a run directory under ``directory``, checked by Envoy."""
    run_dir = RunDir(directory / "run")
    run_dir.create()
    policy = policy or load_policy(QUICKSTART)
    write_json_atomically(run_dir.bootstrap, render_bootstrap(policy, run_dir))
    write_json_atomically(run_dir.cds, cds)
    return validate(run_dir.bootstrap)
