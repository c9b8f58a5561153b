"""The worker learns an engine is up only after Envoy has its endpoint: the supervisor
writes the CDS file, waits until Envoy reports that version applied, then engines.json.
Otherwise the worker could dispatch the first request to a just-loaded engine before
Envoy routes to it, and that request would get a 503."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from fairlane.engines.supervisor import EngineSupervisor
from fairlane.envoy.admin import wait_for_cds
from fairlane.envoy.bootstrap import write_json_atomically
from fairlane.policy import Policy
from fairlane.ports import free_port
from fairlane.rundir import RunDir

pytestmark = pytest.mark.integration


class FakeEnvoyAdmin:
    """A fake of the one admin stat Fairlane reads: the CDS version Envoy applied, which
    the test sets. The real Envoy is asked the same in the last test."""

    def __init__(self) -> None:
        self.applied = "0"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    async def stats(self, request: web.Request) -> web.Response:
        assert request.query["filter"] == "^cluster_manager\\.cds\\.version_text$"
        return web.json_response(
            {"stats": [{"name": "cluster_manager.cds.version_text", "value": self.applied}]}
        )


@pytest.fixture
async def fake_admin() -> AsyncIterator[FakeEnvoyAdmin]:
    admin = FakeEnvoyAdmin()
    app = web.Application()
    app.router.add_get("/stats", admin.stats)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", admin.port).start()
    yield admin
    await runner.cleanup()


def _supervisor(tmp_path: Path, admin_port: int) -> EngineSupervisor:
    policy = Policy.model_validate(
        {
            "version": 1,
            "listener": {"admin_port": admin_port},
            "engines": {
                "e": {"kind": "external", "url": "http://127.0.0.1:1", "models": ["m"]},
            },
        }
    )
    run_dir = RunDir(tmp_path)
    run_dir.create()
    return EngineSupervisor(policy, run_dir)


def _version(path: Path) -> int:
    return int(json.loads(path.read_text())["version"]) if path.exists() else 0


async def test_the_worker_is_told_only_after_envoy_applied_the_endpoints(
    tmp_path: Path, fake_admin: FakeEnvoyAdmin
) -> None:
    supervisor = _supervisor(tmp_path, fake_admin.port)
    publishing = asyncio.create_task(supervisor.publish())
    await asyncio.sleep(0.3)
    assert not publishing.done()
    cds = json.loads(supervisor.run_dir.cds.read_text())
    assert cds["version_info"] == "1"
    assert _version(supervisor.run_dir.engine_states) == 0  # Envoy has not applied it
    fake_admin.applied = "1"
    await asyncio.wait_for(publishing, timeout=1)
    assert _version(supervisor.run_dir.engine_states) == 1


async def test_publishes_go_one_at_a_time_and_in_order(
    tmp_path: Path, fake_admin: FakeEnvoyAdmin
) -> None:
    supervisor = _supervisor(tmp_path, fake_admin.port)
    first = asyncio.create_task(supervisor.publish())
    second = asyncio.create_task(supervisor.publish())
    await asyncio.sleep(0.2)
    assert json.loads(supervisor.run_dir.cds.read_text())["version_info"] == "1"
    fake_admin.applied = "2"  # a later version applied covers the earlier one too
    await asyncio.wait_for(asyncio.gather(first, second), timeout=1)
    assert _version(supervisor.run_dir.engine_states) == 2


async def test_with_no_envoy_listening_a_publish_does_not_wait(tmp_path: Path) -> None:
    supervisor = _supervisor(tmp_path, free_port())  # Envoy reads the file when it starts
    start = time.monotonic()
    await supervisor.publish()
    assert time.monotonic() - start < 0.5
    assert _version(supervisor.run_dir.engine_states) == 1


async def test_an_envoy_that_never_applies_it_delays_a_publish_only_so_long(
    fake_admin: FakeEnvoyAdmin, caplog: pytest.LogCaptureFixture
) -> None:
    start = time.monotonic()
    assert not await wait_for_cds(fake_admin.url, 5, timeout_s=0.3)
    assert 0.3 <= time.monotonic() - start < 1.0
    assert "Envoy has not applied CDS version 5 after 0.3s" in caplog.text


async def test_the_real_envoy_reports_the_cds_version_it_applied(stack_factory: Any) -> None:
    stack = stack_factory(
        {"version": 1, "engines": {"e": {"kind": "sim", "preset": "h100-8b", "models": ["m"]}}}
    )
    cds_path = stack.run_dir / "cds" / "cds.json"
    published = _version(stack.run_dir / "engines.json")
    assert published >= 1
    assert await wait_for_cds(stack.admin, published, timeout_s=2)
    assert not await wait_for_cds(stack.admin, published + 100, timeout_s=0.2)

    cds: dict[str, Any] = json.loads(cds_path.read_text())
    cds["version_info"] = str(published + 100)  # same clusters, a later version
    write_json_atomically(cds_path, cds)
    assert await wait_for_cds(stack.admin, published + 100, timeout_s=2)
