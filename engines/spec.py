"""How each kind of engine is started and where it listens."""

from __future__ import annotations

import socket
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from fairlane.policy import EngineConfig


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
    def managed(self) -> bool:
        return bool(self.argv)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def engine_spec(name: str, config: EngineConfig, port: int | None = None) -> EngineSpec:
    if config.kind == "external":
        assert config.url is not None  # the policy schema guarantees it
        parts = urlsplit(config.url)
        default = 443 if parts.scheme == "https" else 80
        return EngineSpec(name, config, parts.hostname or "127.0.0.1", parts.port or default)
    port = config.port or port or free_port(config.host)
    argv = build_argv(config, config.host, port)
    return EngineSpec(name, config, config.host, port, argv, dict(config.env))


def build_argv(config: EngineConfig, host: str, port: int) -> list[str]:
    python = sys.executable
    if config.kind == "sim":
        argv = [
            python,
            "-P",
            "-m",
            "fairlane.engines.sim",
            "--preset",
            config.preset,
            "--host",
            host,
            "--port",
            str(port),
        ]
        for model in config.models:
            argv += ["--model", model]
        return argv + list(config.args)
    if config.kind == "vllm":
        argv = [
            python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            config.model_path or config.models[0],
            "--served-model-name",
            *config.models,
            "--host",
            host,
            "--port",
            str(port),
        ]
        if config.inject_priority:
            argv += ["--scheduling-policy", "priority"]
        return argv + list(config.args)
    if config.kind == "sglang":
        return [
            python,
            "-m",
            "sglang.launch_server",
            "--model-path",
            config.model_path or config.models[0],
            "--served-model-name",
            config.models[0],
            "--host",
            host,
            "--port",
            str(port),
            *config.args,
        ]
    raise ValueError(f"unknown engine kind {config.kind!r}")
