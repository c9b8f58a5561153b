"""An external engine's own API key: from the environment, checked before it is used."""

from __future__ import annotations

from pathlib import Path

import pytest

from fairlane.engine_keys import engine_keys
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import PolicyError, parse_policy
from fairlane.reload import PolicyWatcher

POLICY = """
version: 1
engines:
  local: {kind: sim, models: [m1]}
  remote: {kind: external, url: "http://127.0.0.1:8100", models: [m2], api_key_env: REMOTE_KEY}
"""


def test_the_key_comes_from_the_environment() -> None:
    policy = parse_policy(POLICY)
    assert engine_keys(policy, {"REMOTE_KEY": "sk-engine"}) == {"remote": "sk-engine"}
    runtime = compile_policy(policy, 1, {"REMOTE_KEY": "sk-engine"})
    assert runtime.engine_auth == {"remote": "Bearer sk-engine"}


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({}, "$REMOTE_KEY is not set in the environment of fairlane serve"),
        ({"REMOTE_KEY": ""}, "$REMOTE_KEY is not set in the environment of fairlane serve"),
        ({"REMOTE_KEY": "sk\r\nx-tenant-id: bob"}, "$REMOTE_KEY must be printable ASCII"),
        ({"REMOTE_KEY": "sk-é"}, "$REMOTE_KEY must be printable ASCII"),
    ],
)
def test_an_unusable_key_is_a_policy_problem(environ: dict[str, str], problem: str) -> None:
    policy = parse_policy(POLICY)
    with pytest.raises(PolicyError) as info:
        engine_keys(policy, environ)
    assert info.value.problems == [f"engines.remote.api_key_env: {problem}"]
    with pytest.raises(PolicyError):
        compile_policy(policy, 1, environ)


def test_a_reload_that_needs_an_unset_key_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    applied: list[object] = []
    refused: list[PolicyError] = []
    watcher = PolicyWatcher(path, parse_policy(POLICY).listener, applied.append, refused.append)
    monkeypatch.delenv("REMOTE_KEY", raising=False)
    watcher.reload_now()
    unset = "engines.remote.api_key_env: $REMOTE_KEY is not set in the environment of fairlane"
    unset += " serve"
    assert (applied, [e.problems for e in refused]) == ([], [[unset]])
    monkeypatch.setenv("REMOTE_KEY", "sk-engine")
    watcher.reload_now()
    assert len(applied) == 1
