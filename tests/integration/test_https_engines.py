"""An external engine at an https:// url (a vLLM started with --ssl-certfile): served
through Envoy with its certificate checked, by IP address and by host name, and refused
(down, with a log line that says why) when the certificate does not verify. The engine is
the simulator serving HTTPS, started here as a user would start theirs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from fairlane.engine_config import EngineConfig
from fairlane.ports import free_port
from fairlane.worker import _engine_load

from testkit.certs import ThrowawayCA
from testkit.sim_server import start_sim, stop_sim

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, ThrowawayCA]]:
    directory = tmp_path_factory.mktemp("engine-certs")
    ca = ThrowawayCA(directory)
    ca.issue(directory / "cert.pem", directory / "key.pem")
    port = free_port()
    proc = start_sim(
        port,
        *("--model", "by-ip", "--model", "by-name", "--model", "untrusted"),
        *("--ssl-certfile", str(directory / "cert.pem")),
        *("--ssl-keyfile", str(directory / "key.pem")),
    )
    try:
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if proc.stdout and "ready on https://" in proc.stdout.readline():
                break
        assert proc.poll() is None, proc.communicate()[1]
        yield port, ca
    finally:
        stop_sim(proc)


@pytest.fixture(scope="module")
def stack(
    stack_factory: Any, engine: tuple[int, ThrowawayCA], tmp_path_factory: pytest.TempPathFactory
) -> Any:
    port, ca = engine
    stranger = ThrowawayCA(tmp_path_factory.mktemp("other-ca"))
    external = {"kind": "external", "linger_s": 0}
    policy = {
        "version": 1,
        "tenants": {"alice": {}},
        "engines": {
            "ip": external
            | {"url": f"https://127.0.0.1:{port}", "models": ["by-ip"], "ca_file": str(ca.ca_file)},
            "name": external
            | {
                "url": f"https://localhost:{port}",
                "models": ["by-name"],
                "ca_file": str(ca.ca_file),
            },
            "untrusted": external
            | {
                "url": f"https://127.0.0.1:{port}",
                "models": ["untrusted"],
                "ca_file": str(stranger.ca_file),
            },
        },
    }
    return stack_factory(policy, healthy=False)  # "untrusted" stays down: /health is 503


async def _served(stack: Any, model: str) -> tuple[int, dict[str, Any]]:
    """The answer once the stack is up (Envoy, the worker, the engine's first probes)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = await stack.post_json("/v1/chat/completions", _chat(model))
        except aiohttp.ClientConnectionError:
            status, body = 0, {}
        if status not in (0, 503) or time.monotonic() > deadline:
            return status, body
        await asyncio.sleep(0.2)


def _chat(model: str) -> dict[str, Any]:
    return {"model": model, "max_tokens": 3, "messages": [{"role": "user", "content": "Hi"}]}


async def test_an_https_engine_is_served_by_address_and_by_name(stack: Any) -> None:
    for model in ("by-ip", "by-name"):
        status, body = await _served(stack, model)
        assert status == 200, body
        assert body["usage"]["completion_tokens"] == 3


async def test_a_certificate_that_does_not_verify_keeps_the_engine_down(stack: Any) -> None:
    await _served(stack, "by-ip")  # the stack is up
    deadline = time.monotonic() + 30
    while stack.engine_states()["untrusted"]["state"] != "down":
        assert time.monotonic() < deadline, stack.engine_states()
        await asyncio.sleep(0.2)
    status, body = await stack.post_json("/v1/chat/completions", _chat("untrusted"))
    assert status == 503
    assert body["error"]["code"] == "engine_unavailable"
    port = stack.policy["engines"]["untrusted"]["url"].rsplit(":", 1)[1]
    assert (
        f"engine untrusted: the certificate of https://127.0.0.1:{port} did not verify "
        f"against {stack.policy['engines']['untrusted']['ca_file']}"
    ) in stack.logs()


async def test_the_adaptive_limit_reads_an_https_engines_metrics(
    engine: tuple[int, ThrowawayCA],
) -> None:
    port, ca = engine
    config = EngineConfig(
        kind="external", url=f"https://localhost:{port}", ca_file=str(ca.ca_file), models=["m"]
    )
    async with aiohttp.ClientSession() as session:
        load = await _engine_load(session, {"url": f"https://localhost:{port}"}, config)
    assert load is not None and load.waiting == 0
