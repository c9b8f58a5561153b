"""Envoy's own check of a rendered bootstrap (`envoy --mode validate`)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from fairlane.serve import envoy_binary


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
