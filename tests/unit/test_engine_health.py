"""The worker's view of an engine from the supervisor's report (engines.json)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from fairlane.control import build_control_app, health, status
from fairlane.engine_config import EngineConfig
from fairlane.extproc.engine_health import reported_state
from fairlane.extproc.gateway import Gateway
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.outcomes import Pending
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.request import request_info
from fairlane.extproc.runtime import compile_policy
from fairlane.policy_file import parse_policy

Handler = Callable[[web.Request], Awaitable[web.Response]]
ENGINE = EngineConfig(kind="sim", models=("base",), adapters={"alice-lora": "/a"})


@pytest.mark.parametrize(
    ("state", "want"),
    [
        ("up", EngineState.UP),
        ("down", EngineState.DOWN),
        ("restarting", EngineState.DOWN),
        ("starting", EngineState.STARTING),
        ("idle", EngineState.IDLE),  # a lazy engine not loaded: its queue loads it
        ("new-word", EngineState.STARTING),  # one this worker does not know yet
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


def lazy_gateway() -> Gateway:
    """An eager engine up and a lazy one the supervisor reports idle (not loaded)."""
    policy = """
version: 1
engines:
  eager: {kind: sim, models: [m]}
  sim-lazy: {kind: sim, models: [n], lazy: true}
"""
    g = Gateway(compile_policy(parse_policy(policy), 1), Metrics())
    g.health.set_state("eager", reported_state({"state": "up"}, None))
    g.health.set_state("sim-lazy", reported_state({"state": "idle"}, None))
    return g


async def get(handler: Handler, g: Gateway) -> tuple[int, dict[str, Any]]:
    response = await handler(make_mocked_request("GET", "/", app=build_control_app(g)))
    assert response.text is not None
    return response.status, json.loads(response.text)


async def test_an_idle_lazy_engine_is_idle_on_health_and_status_and_not_unhealthy() -> None:
    """As engines.json says: not `starting`, which it would show until its first request."""
    g = lazy_gateway()
    code, body = await get(health, g)
    assert (code, body["status"]) == (200, "ok")  # a lazy engine's absence is not unhealthy
    assert body["engines"] == {"eager": "up", "sim-lazy": "idle"}
    assert body["missing_models"] == ["n"]
    _, snapshot = await get(status, g)
    assert snapshot["engines"]["sim-lazy"]["state"] == "idle"


async def test_a_request_for_an_idle_lazy_engine_waits_for_it_to_load() -> None:
    g = lazy_gateway()
    ask = request_info({"x-tenant-id": "alice", "content-length": "40"}, {"model": "n"})
    assert isinstance(g.begin(ask), Pending)  # queued (the demand that loads it), not refused
    assert g.pools["sim-lazy"].state is EngineState.STARTING
