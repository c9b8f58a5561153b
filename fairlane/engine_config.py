"""An engine's section of the policy (``engines.<name>``): how Fairlane starts or reaches
it, and how the worker schedules and protects it."""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, model_validator

from fairlane.engines.vllm_scheduler import Isolation
from fairlane.policy_base import Name, Strict


class QueueConfig(Strict):
    max_per_tenant: int = Field(256, ge=1)
    max_total: int = Field(4096, ge=1)
    timeout_s: float = Field(30.0, gt=0)


class HealthConfig(Strict):
    """The supervisor's ``GET /health`` probe of an engine (every 0.5 s)."""

    timeout_s: float = Field(5.0, gt=0)
    # A running engine leaves routing only after failing this long: a busy engine can
    # answer late (vLLM's /health waits on its engine core's loop), and one that died
    # is seen at once from its process (managed) or refused connections (external).
    unhealthy_after_s: float = Field(10.0, gt=0)


class AdaptiveConfig(Strict):
    """Adjust the in-flight limit from the engine's own /metrics."""

    min_inflight: int = Field(4, ge=1)
    max_waiting: int = Field(0, ge=0)
    max_kv_usage: float = Field(0.9, gt=0, le=1)
    interval_s: float = Field(0.5, gt=0)


# The nice of a managed vllm or sglang engine unless the policy says otherwise.
DEFAULT_ENGINE_NICE = 10


class EngineConfig(Strict):
    kind: Literal["sim", "vllm", "sglang", "external"]
    models: tuple[Name, ...] = Field(min_length=1)
    url: str | None = None
    # An https:// url's certificate is checked against this PEM bundle (a private CA's,
    # or the engine's own self-signed certificate); without it, the system's.
    ca_file: str | None = None
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)
    preset: str = "a100-8b"
    model_path: str | None = None
    # LoRA adapters on the base model (vllm; sim serves the names): the name clients send
    # in `model` → the adapter's directory or Hugging Face id.
    adapters: dict[Name, str] = {}
    args: tuple[str, ...] = ()
    env: dict[str, str] = {}
    gpu_memory_gb: float = Field(0.0, ge=0)
    lazy: bool = False  # start on the first request, not at boot
    pinned: bool = False  # never unloaded to make room for another engine
    max_inflight: int = Field(64, ge=1)
    adaptive: AdaptiveConfig | None = None
    scheduler: Literal["fair", "fifo"] = "fair"
    # Fraction of the in-flight limit kept for tenants under their share (fair only).
    headroom: float = Field(0.125, ge=0, lt=1)
    # A tenant still counts as active this long after its last request ended: its share,
    # and the reserved slots, stay while it pauses between short requests.
    linger_s: float = Field(30.0, ge=0)
    # Admissions per completion of the pool that a tenant at or over its share may make
    # (fair only; 0: unpaced). On by default: it keeps a flood's onset from taking the
    # slots several light tenants are still ramping up into.
    pacing: float = Field(1.1, ge=0)
    queue: QueueConfig = QueueConfig()
    # true: as the engine reads it best (a header for vllm/sim, the body otherwise).
    inject_priority: bool | Literal["header", "body"] = False
    # With inject_priority, the step that prefills a better priority's prompt runs no worse
    # prompt ("prompts"; true is the same) or nothing worse, decodes included ("step")
    # (vllm: fairlane.engines.vllm_scheduler; sim). None: "prompts" where it can be.
    isolate_prefills: Literal[False, True, "prompts", "step"] | None = None
    # With isolated prefills: the most prompt tokens one step prefills of tenants over
    # their share while one under it has sent a request in the last 30 s, so the step a
    # light prompt arrives into is short (fairlane.engines.heavy_prefills). None: no cap.
    heavy_prefill_tokens: int | None = Field(None, ge=1)
    # Tell the engine's scheduler of each admitted request (a UDP datagram to the engine's
    # host and port), so no worse prompt starts while it is on its way
    # (fairlane.engines.announcements). None: where Fairlane starts it isolating prefills;
    # true on an external engine: it runs Fairlane's scheduler, listening there.
    announce: bool | None = None
    startup_timeout_s: float = Field(600.0, gt=0)
    # The CPU priority (nice, 0-19) of a managed engine's processes; None: 10 for vllm and
    # sglang, 0 for sim. An engine that saturates the CPUs must not starve Envoy and the
    # worker, which every request passes through (docs/engines.md, "CPU priority").
    nice: int | None = Field(None, ge=0, le=19)
    health: HealthConfig = HealthConfig()
    # External engines started with their own API key (vLLM's --api-key): the variable,
    # in `fairlane serve`'s environment, that holds it. Requests carry it to the engine
    # in place of the client's Authorization; it is never written anywhere.
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")

    @property
    def priority_transport(self) -> Literal["header", "body"] | None:
        """How this engine gets each request's priority; None: it does not."""
        if self.inject_priority is True:
            return "header" if self.kind in ("vllm", "sim") else "body"
        return self.inject_priority or None

    @property
    def prefill_isolation(self) -> Isolation | None:
        """How this engine is started to isolate prefills; None: it is not."""
        if self.isolate_prefills is False or not self.inject_priority:
            return None
        if self.kind not in ("vllm", "sim"):
            return None
        return "step" if self.isolate_prefills == "step" else "prompts"

    @property
    def announces(self) -> bool:
        """Whether Fairlane tells this engine of the requests it admits."""
        if self.kind == "external":
            return bool(self.announce)
        return self.announce is not False and self.prefill_isolation is not None

    @property
    def served(self) -> tuple[str, ...]:
        """Every name this engine answers to in `model`: its models, then its adapters."""
        return self.models + tuple(self.adapters)

    @property
    def https(self) -> bool:
        """An external engine reached over TLS."""
        return bool(self.url and self.url.startswith("https://"))

    @property
    def cpu_nice(self) -> int:
        """The nice value a managed engine runs at. The simulator stands in for a GPU, and
        its timing is what benchmarks measure: it competes for the CPU on equal terms."""
        if self.nice is not None:
            return self.nice
        return 0 if self.kind == "sim" else DEFAULT_ENGINE_NICE

    @model_validator(mode="after")
    def _url_matches_kind(self) -> EngineConfig:
        if self.kind == "external" and not self.url:
            raise ValueError("an external engine needs `url`")
        if self.kind != "external" and self.url:
            raise ValueError("`url` is only for kind: external (managed engines get host/port)")
        if self.url and not re.match(r"^https?://[^/\s]+/?$", self.url):
            raise ValueError("url must look like http://host:port or https://host:port (no path)")
        if self.ca_file is not None and not self.https:
            raise ValueError("ca_file is for an external engine at an https:// url")
        if self.kind == "sglang" and len(self.models) != 1:
            raise ValueError("an sglang engine serves exactly one model name")
        if self.kind == "external" and (self.lazy or self.pinned):
            raise ValueError("lazy and pinned are for engines Fairlane starts")
        if self.kind == "external" and self.nice is not None:
            raise ValueError("nice is for engines Fairlane starts (run an external one under nice)")
        if self.kind != "external" and self.api_key_env:
            raise ValueError("api_key_env is for external engines (Fairlane starts the others)")
        self._check_isolation()
        self._check_announce()
        return self._check_adapters()

    def _check_isolation(self) -> None:
        if self.heavy_prefill_tokens is not None and self.prefill_isolation is None:
            raise ValueError(
                "heavy_prefill_tokens needs isolated prefills (vllm or sim, inject_priority, "
                "isolate_prefills not false)"
            )
        if not self.isolate_prefills:
            return
        if self.kind == "external":
            raise ValueError(
                "isolate_prefills is for engines Fairlane starts: start an external vLLM "
                "with --scheduler-cls fairlane.engines.vllm_scheduler.isolated_prefills "
                "(or .isolated_prefill_steps)"
            )
        if self.kind == "sglang":
            raise ValueError("isolate_prefills: SGLang's scheduler is not supported (vllm, sim)")
        if not self.inject_priority:
            raise ValueError("isolate_prefills needs inject_priority: it isolates by priority")

    def _check_announce(self) -> None:
        if not self.announce:
            return
        if self.kind == "external":
            if not self.inject_priority:
                raise ValueError("announce needs inject_priority: it announces priorities")
            host = urlsplit(self.url or "").hostname or ""
            if not is_ip_address(host):
                raise ValueError(
                    f"announce: the url's host {host!r} must be an IP address (no name "
                    "lookups on the request path)"
                )
        elif self.prefill_isolation is None:
            raise ValueError(
                "announce: true needs isolated prefills (vllm or sim, inject_priority, "
                "isolate_prefills not false)"
            )

    def _check_adapters(self) -> EngineConfig:
        if not self.adapters:
            return self
        if self.kind == "external":
            raise ValueError(
                "adapters are for engines Fairlane starts: list an external engine's LoRA "
                "adapters in `models`, as it serves them"
            )
        if self.kind == "sglang":
            raise ValueError("adapters: SGLang's LoRA adapters are not supported (vllm and sim)")
        clash = sorted(set(self.adapters) & set(self.models))
        if clash:
            raise ValueError(f"{', '.join(clash)}: a name in both models and adapters")
        return self


def is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
