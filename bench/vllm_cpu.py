"""A real vLLM on CPU for benchmarks: the tiny generated Llama, started outside Fairlane.

Benchmarks use it as an ``external`` engine, so several arms (each a fresh
``fairlane serve``) can share one vLLM: starting it costs ~45 s on two cores. It needs
an interpreter with ``vllm`` importable (``make e2e`` builds ``.venv-e2e``); the model is
generated locally by ``fairlane.engines.tinymodel`` (no downloads) and cached.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

from fairlane.bench.stack import Server
from fairlane.engine_config import DEFAULT_ENGINE_NICE
from fairlane.engines import tinymodel

MODEL_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fairlane/tiny-llama"
START_TIMEOUT_S = 300.0
# As the e2e tier runs it: a 1 GiB KV cache, no downloads, eager mode (no compile
# warm-up). No prefix caching: every benchmark prompt is the same text, and a cache hit
# would make prefill free, unlike real traffic (and unlike the simulator).
ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
ARGS = (
    "--max-model-len", "1024", "--dtype", "bfloat16", "--enforce-eager",
    "--no-enable-prefix-caching", "--disable-uvicorn-access-log",
    "--scheduling-policy", "priority",
)  # fmt: skip


def available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def vllm_argv(
    model_dir: Path, name: str, port: int, max_num_seqs: int, extra: tuple[str, ...] = ()
) -> list[str]:
    return [
        sys.executable, "-P", "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--served-model-name", name,
        "--host", "127.0.0.1", "--port", str(port),
        "--max-num-seqs", str(max_num_seqs), *ARGS, *extra,
    ]  # fmt: skip


async def start_vllm_cpu(
    name: str,
    port: int,
    max_num_seqs: int,
    log_dir: Path,
    extra: tuple[str, ...] = (),
    nice: int = DEFAULT_ENGINE_NICE,
    env: dict[str, str] | None = None,
) -> Server:
    """Start vLLM serving the tiny model as ``name``, ``extra`` flags last, at ``nice``
    (a managed vLLM's by default), ``env`` added to its environment; returns once
    /health answers."""
    if not available():
        raise SystemExit(
            "--engine vllm-cpu needs vllm in this interpreter: run `make e2e` once, then "
            "`.venv-e2e/bin/fairlane bench noisy-neighbor --engine vllm-cpu ...`"
        )
    model_dir = tinymodel.generate(MODEL_DIR)
    argv = vllm_argv(model_dir, name, port, max_num_seqs, extra)
    # At nice 10 by default, as Fairlane runs a vLLM it manages and as docs/engines.md
    # tells users to run an external one: at 0, on two cores, it starves Envoy and the worker.
    server = Server("vllm", argv, log_dir / f"vllm-{port}.log", env=ENV | (env or {}), nice=nice)
    await server.start()
    await server.wait_healthy(f"http://127.0.0.1:{port}/health", START_TIMEOUT_S)
    return server
