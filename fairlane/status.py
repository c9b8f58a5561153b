"""`fairlane status`: a live per-tenant table read from a running instance."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fairlane.policy_file import PolicyError, load_policy


def fetch(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def render(now: dict[str, Any], before: dict[str, Any] | None, dt: float) -> str:
    lines = ["ENGINE            STATE     IN-FLIGHT  CAPACITY  RESERVED  QUEUED  SCHEDULER"]
    for name, e in sorted(now["engines"].items()):
        lines.append(
            f"{name:<17} {e['state']:<9} {e['inflight']:>9}  {e['capacity']:>8}  "
            f"{e.get('reserved', 0):>8}  {e['queued']:>6}  {e['scheduler']}"
        )
    lines.append("")
    lines.append("TENANT            IN-FLIGHT  QUEUED  TOKENS/S  REQUESTS  REJECTED")
    for tenant, t in sorted(now["tenants"].items()):
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        rate = 0.0
        if before is not None and tenant in before["tenants"] and dt > 0:
            b = before["tenants"][tenant]
            rate = (tokens - b["prompt_tokens"] - b["completion_tokens"]) / dt
        lines.append(
            f"{tenant:<17} {t['inflight']:>9.0f}  {t['queued']:>6.0f}  {rate:>8.1f}  "
            f"{t['requests']:>8.0f}  {t['rejected']:>8.0f}"
        )
    return "\n".join(lines)


def run_status(config: Path, *, once: bool, interval_s: float) -> int:
    try:
        port = load_policy(config).listener.control_port
    except PolicyError as exc:
        print(exc)
        return 1
    before: dict[str, Any] | None = None
    last = time.monotonic()
    try:
        while True:
            try:
                now = fetch(port)
            except (urllib.error.URLError, OSError) as exc:
                print(f"cannot reach fairlane on 127.0.0.1:{port}: {exc}")
                return 1
            t = time.monotonic()
            table = render(now, before, t - last)
            if once and before is not None:
                print(table)
                return 0
            if not once:  # --once prints only its second table: one sample has no rate
                print("\033[2J\033[H" + time.strftime("%H:%M:%S") + "\n" + table, flush=True)
            before, last = now, t
            time.sleep(interval_s)
    except KeyboardInterrupt:
        return 0
