"""`fairlane serve` on a policy reload: the listener section is Envoy's and applies on
restart only, so it is compared with the listener running, not the last file's."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fairlane.policy import Policy
from fairlane.policy_file import parse_policy
from fairlane.rundir import RunDir
from fairlane.serve import Server

POLICY = "version: 1\n{listener}engines:\n  sim: {{kind: sim, models: [m]}}\n"
RUNNING = POLICY.format(listener="")
BIGGER_BODIES = POLICY.format(listener="listener:\n  max_body_bytes: 2048\n")


async def reloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, *files: str
) -> list[tuple[str, str]]:
    """What serve logs about the listener as it applies each file in turn (no child
    processes: none is started, and the engines' part of a reload is left out)."""

    async def apply(policy: Policy) -> None:
        pass

    server = Server(tmp_path / "policy.yaml", parse_policy(RUNNING), RunDir(tmp_path / "run"))
    monkeypatch.setattr(server.engines, "apply", apply)
    with caplog.at_level(logging.INFO, logger="fairlane.serve"):
        for text in files:
            server._on_policy(parse_policy(text))
            await server._tend()  # applies it: serve's policy is now this file's
    return [(r.levelname, r.getMessage()) for r in caplog.records if "listener" in r.message]


async def test_a_reverted_listener_change_needs_no_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    logged = await reloads(tmp_path, monkeypatch, caplog, BIGGER_BODIES, RUNNING, RUNNING)
    assert logged == [
        (
            "WARNING",
            "the listener section changed: restart `fairlane serve` to apply it "
            "(the rest of the policy is applied now)",
        ),
        ("INFO", "the listener section matches the running one again: no restart needed"),
    ]


async def test_a_listener_change_is_reported_on_every_reload_until_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The second file's listener is the first's, yet neither is the running one."""
    logged = await reloads(tmp_path, monkeypatch, caplog, BIGGER_BODIES, BIGGER_BODIES)
    assert [level for level, _ in logged] == ["WARNING", "WARNING"]
