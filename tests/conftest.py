"""Shared fixtures: a real `fairlane serve` (Envoy + worker + engines) per test module.

Every stack uses free ports and its own run directory, runs in its own process group,
and is stopped by PID; teardown asserts no child process outlived it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Test modules import their shared helpers as `testkit.*` (pytest's importlib mode puts
# no test directory on the path by itself).
sys.path.insert(0, str(Path(__file__).parent))
from testkit.fake_engine import FakeEngine
from testkit.redis_server import RedisServer
from testkit.stack import Stack


@pytest.fixture(scope="module")
def stack_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    stacks: list[Stack] = []

    def start(
        policy: dict[str, Any], healthy: bool = True, env: dict[str, str] | None = None
    ) -> Stack:
        stack = Stack(tmp_path_factory.mktemp("stack"), policy, env or {})
        stacks.append(stack)
        if healthy:
            stack.wait_healthy()
        return stack

    yield start
    for stack in stacks:
        assert not stack.stop(), "child processes outlived `fairlane serve`"


@pytest.fixture(scope="module")
def fake_engine_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Start FakeEngine processes for a module; all are killed by PID at its end."""
    engines: list[FakeEngine] = []

    def start() -> FakeEngine:
        engine = FakeEngine(tmp_path_factory.mktemp("fake") / "fake-engine.log")
        engines.append(engine)
        return engine

    yield start
    for engine in engines:
        engine.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()
