"""`fairlane status`: the table it prints from two /status snapshots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fairlane import status
from fairlane.status import render, run_status


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


class Clock:
    """Stands in for the ``time`` module in fairlane.status: sleeping moves it on."""

    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def test_once_prints_the_rate_between_two_samples_an_interval_apart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One sample has no rate: --once waits an interval for a second one, so TOKENS/S
    is real (it used to print 0.0 whatever was running)."""
    config = tmp_path / "policy.yaml"
    config.write_text("version: 1\nengines:\n  e: {kind: sim, models: [m]}\n")
    samples = iter([snapshot(300.0), snapshot(500.0)])
    clock = Clock()
    monkeypatch.setattr(status, "fetch", lambda port: next(samples))
    monkeypatch.setattr(status, "time", clock)
    assert run_status(config, once=True, interval_s=2.0) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[-1].split() == ["alice", "7", "3", "100.0", "12", "1"]  # 200 tokens / 2 s
    assert table[0].split()[0] == "ENGINE"  # one table, no screen clearing
    assert clock.slept == [2.0]
