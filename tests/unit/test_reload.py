"""A reload is checked against the running listener: Envoy applies that section only on
restart, so a queue timeout the new section would allow may be one the running Envoy
cuts short."""

from __future__ import annotations

from pathlib import Path

from fairlane.policy import Policy
from fairlane.policy_file import PolicyError, parse_policy
from fairlane.reload import PolicyWatcher

POLICY = """
version: 1
listener: {{stream_idle_timeout_s: {idle}}}
engines:
  sim: {{kind: sim, models: [m1], queue: {{timeout_s: {queue}}}}}
"""
RUNNING = POLICY.format(idle=300, queue=30)


def watch(path: Path) -> tuple[PolicyWatcher, list[Policy], list[PolicyError]]:
    applied: list[Policy] = []
    refused: list[PolicyError] = []
    watcher = PolicyWatcher(path, parse_policy(RUNNING).listener, applied.append, refused.append)
    return watcher, applied, refused


def test_a_queue_timeout_past_the_running_idle_timeout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    # Valid on its own (400 < 600), but the running Envoy keeps its 300 s until restarted.
    path.write_text(POLICY.format(idle=600, queue=400))
    parse_policy(path.read_text())
    watcher, applied, refused = watch(path)
    watcher.reload_now()
    assert applied == []
    assert [e.problems for e in refused] == [
        [
            f"{path} engines.sim.queue.timeout_s: must be below the running "
            "listener.stream_idle_timeout_s (300) (a new listener section applies on restart)"
        ]
    ]


def test_a_queue_timeout_under_the_running_idle_timeout_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.format(idle=300, queue=299))
    watcher, applied, refused = watch(path)
    watcher.reload_now()
    assert (len(applied), refused) == (1, [])
    assert applied[0].engines["sim"].queue.timeout_s == 299
