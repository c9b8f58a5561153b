"""`fairlane status`: the table it prints from two /status snapshots."""

from __future__ import annotations

from typing import Any

from fairlane.status import render


def snapshot(completion_tokens: float) -> dict[str, Any]:
    engine = {"state": "up", "inflight": 7, "capacity": 8, "reserved": 2, "queued": 3}
    tenant = {
        "inflight": 7,
        "queued": 3,
        "prompt_tokens": 100.0,
        "completion_tokens": completion_tokens,
        "requests": 12,
        "rejected": 1,
    }
    return {"engines": {"e": engine | {"scheduler": "fair"}}, "tenants": {"alice": tenant}}


def test_status_table_shows_reserved_slots_and_token_rate() -> None:
    text = render(snapshot(500.0), snapshot(300.0), dt=2.0)
    header, engine = text.splitlines()[:2]
    assert header.split() == [
        "ENGINE", "STATE", "IN-FLIGHT", "CAPACITY", "RESERVED", "QUEUED", "SCHEDULER"
    ]  # fmt: skip
    assert engine.split() == ["e", "up", "7", "8", "2", "3", "fair"]
    alice = text.splitlines()[-1].split()
    assert alice == ["alice", "7", "3", "100.0", "12", "1"]  # (600 - 400) tokens / 2 s


def test_first_snapshot_has_no_rate() -> None:
    assert render(snapshot(500.0), None, dt=0.0).splitlines()[-1].split()[3] == "0.0"
