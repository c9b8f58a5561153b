"""The worker's view of an engine from the supervisor's report (engines.json)."""

from __future__ import annotations

import pytest

from fairlane.engine_config import EngineConfig
from fairlane.extproc.engine_health import reported_state
from fairlane.extproc.replicas import EngineState

ENGINE = EngineConfig(kind="sim", models=("base",), adapters={"alice-lora": "/a"})


@pytest.mark.parametrize(
    ("state", "want"),
    [
        ("up", EngineState.UP),
        ("down", EngineState.DOWN),
        ("restarting", EngineState.DOWN),
        ("starting", EngineState.STARTING),
        ("idle", EngineState.STARTING),  # a lazy engine's queue is what loads it
    ],
)
def test_the_supervisors_word(state: str, want: EngineState) -> None:
    assert reported_state({"state": state, "serves": ["alice-lora", "base"]}, ENGINE) is want
    assert reported_state({"state": state}, ENGINE) is want  # a report without names
    assert reported_state({"state": state}, None) is want  # an engine the policy dropped


def test_a_process_started_for_other_names_gets_none_of_them() -> None:
    """A reload added an adapter: until the engine restarts with it, the process still
    running would answer 404 for it, so it takes no requests at all."""
    before_reload = {"state": "up", "serves": ["base"]}
    assert reported_state(before_reload, ENGINE) is EngineState.DOWN
    restarted = {"state": "up", "serves": ["base", "alice-lora"]}
    assert reported_state(restarted, ENGINE) is EngineState.UP
