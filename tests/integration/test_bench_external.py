"""`fairlane bench noisy-neighbor --engine external`, end to end and short: the
benchmark's arms in front of an engine it did not start (a simulator started here, as a
user would start vLLM on a GPU), ~20 s."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fairlane.bench.cpu import alive
from fairlane.bench.noisy_deploy import check_external_engine
from fairlane.bench.procwatch import metric_sums
from fairlane.bench.stack import free_port, start_sim

pytestmark = pytest.mark.integration

MODEL = "my-model"


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[str]:
    """A simulator serving MODEL with priority scheduling, as the user's own engine,
    started the way the benchmark starts its own (``start_sim``)."""
    port = free_port()
    server = await start_sim("h100-8b", port, MODEL, tmp_path, ("--scheduling-policy", "priority"))
    try:
        yield f"http://127.0.0.1:{port}"
        assert alive(server.pid), "the benchmark stopped an engine it did not start"
    finally:
        await server.stop()


def bench(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-P", "-m", "fairlane.cli", "bench", "noisy-neighbor", *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def engine_metrics(url: str) -> dict[str, float]:
    names = ("vllm:request_success_total", "fairlane_sim_priority_requests_total")
    with urllib.request.urlopen(url + "/metrics", timeout=5) as resp:
        return metric_sums(resp.read().decode(), names)


def test_the_arms_run_in_front_of_an_engine_the_user_started(engine: str, tmp_path: Path) -> None:
    output = tmp_path / "external.json"
    done = bench(
        "--engine", "external", "--engine-url", engine + "/", "--model", MODEL,
        "--max-inflight", "16", "--arms", "solo", "fifo", "fair",
        "--duration", "3", "--warmup", "1", "--prompt-words", "20", "--max-tokens", "16",
        "--flood-rps", "10", "--no-realtime", "--output", str(output),
    )  # fmt: skip
    # 3: the load generator lagged (a busy box; the arms are flagged LAG!), results kept.
    assert done.returncode == 0 or (done.returncode == 3 and "LAG!" in done.stdout), (
        done.stdout + done.stderr
    )
    document = json.loads(output.read_text())
    assert document["config"]["engine_url"] == engine
    for arm in ("solo", "fifo", "fair"):
        assert document["arms"][arm]["quiet"]["ttft_ms"]["count"] > 0, document["arms"][arm]
    # Every arm's requests reached this engine, the fair arm's with engine priorities,
    # and its queue was watched.
    served = engine_metrics(engine)
    measured = sum(arm["quiet"]["ttft_ms"]["count"] for arm in document["arms"].values())
    assert served["vllm:request_success_total"] >= measured
    assert served["fairlane_sim_priority_requests_total"] > 0
    assert document["arms"]["fifo"]["engine"]["max_running"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model", "typo"], "serves my-model; name one of them with --model"),
        (["--model", MODEL, "--engine-nice", "5"], "start yours with them instead"),
    ],
)
def test_a_wrong_engine_setting_is_refused_before_any_arm(
    engine: str, argv: list[str], message: str
) -> None:
    started = time.monotonic()
    done = bench("--engine", "external", "--engine-url", engine, "--max-inflight", "8", *argv)
    assert done.returncode != 0
    assert message in done.stderr
    assert time.monotonic() - started < 30
    assert engine_metrics(engine)["vllm:request_success_total"] == 0


def test_no_engine_at_the_url_is_refused(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    done = bench("--engine", "external", "--engine-url", url, "--max-inflight", "8")
    assert done.returncode != 0
    assert f"no OpenAI API at {url}" in done.stderr


async def test_an_engine_that_wants_a_key_is_refused_with_the_reason() -> None:
    """A stand-in for vLLM started with --api-key: its 401 is explained, not dumped."""

    async def models(_: web.Request) -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        with pytest.raises(SystemExit, match="wants an API key"):
            await check_external_engine(f"http://127.0.0.1:{port}", MODEL)
    finally:
        await runner.cleanup()
