"""The worker's entry survives a reload signal that comes before its handler is in place.

``fairlane serve`` sends the worker SIGUSR1 whenever the policy file changes, and SIGHUP
when asked to reload; a worker still importing (after a restart) would be killed by
either signal's default action.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

RELOAD_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
RELOAD_BITS = sum(1 << (sig - 1) for sig in RELOAD_SIGNALS)


def _ignores_reload_signals(pid: int) -> bool:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigIgn:"):
            return int(line.split()[1], 16) & RELOAD_BITS == RELOAD_BITS
    return False


def test_a_reload_signal_while_the_worker_starts_does_not_kill_it(tmp_path: Path) -> None:
    missing = tmp_path / "policy.yaml"  # the worker refuses it (exit 2) once it has started
    argv = ["-P", "-m", "fairlane.worker_entry", "--config", str(missing), "--run-dir"]
    proc = subprocess.Popen(
        [sys.executable, *argv, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 10
    while not _ignores_reload_signals(proc.pid):  # the entry's first statement: before imports
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.002)
    for sig in RELOAD_SIGNALS:
        os.kill(proc.pid, sig)  # during the imports: the default action would kill it
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 2, (proc.returncode, out)
    assert b"cannot read" in out
