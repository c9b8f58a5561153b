"""The policy: one YAML file, validated into frozen pydantic models.

Every part of Fairlane reads the same ``Policy`` object. Unknown keys are rejected so a
typo never silently falls back to a default, and ``policy_file.load_policy`` reports
every problem with the file, line and key path (``configs/x.yaml:12 tenants.alice.weight: ...``).
"""

from __future__ import annotations

import hashlib
import re
from typing import Literal

from pydantic import Field, field_validator

from fairlane.engine_config import EngineConfig
from fairlane.policy_base import Name, Strict

SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
ORIGIN = re.compile(r"^(\*|https?://[^/\s]+)$")  # scheme://host[:port], no path; * is any
# A name to find in a client certificate: printable, not padded with spaces.
CERTIFICATE_NAME = re.compile(r"[^\s\x7f](?:[^\x00-\x1f\x7f]{0,1022}[^\s\x7f])?")


class TlsConfig(Strict):
    """HTTPS on the API port: a PEM certificate chain and its private key, handed to
    Envoy again when they are replaced (fairlane/certificates.py)."""

    cert_file: str = Field(min_length=1)
    key_file: str = Field(min_length=1)
    # Mutual TLS: every client shows a certificate signed by a CA in this PEM bundle,
    # and one a tenant lists in `client_certificates` names that tenant.
    client_ca_file: str | None = Field(None, min_length=1)

    @property
    def mutual(self) -> bool:
        """Clients must show a certificate (mutual TLS)."""
        return self.client_ca_file is not None


class ListenerConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    admin_port: int = Field(9901, ge=1, le=65535)
    # Envoy's admin API can stop the server: keep it on loopback unless a container
    # network needs it (then publish it only to the host's loopback).
    admin_host: str = "127.0.0.1"
    control_port: int = Field(9902, ge=1, le=65535)
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    stream_idle_timeout_s: float = Field(300.0, gt=0)
    # How long a client may take to send its request (a slow trickle of body bytes
    # would otherwise hold its connection: each byte restarts the idle timeout).
    request_timeout_s: float = Field(60.0, gt=0)
    drain_grace_s: float = Field(10.0, ge=0)
    expose_metrics: bool = True
    # Browser pages from these origins may call the API (CORS). None by default: a page
    # on another origin cannot then send a tenant header or key (vLLM allows any: "*").
    cors_allow_origins: tuple[str, ...] = ()
    # HTTPS instead of plain HTTP on `port` (HTTP/2 offered by ALPN): without it, keys
    # and prompts cross the network in the clear once `host` is not loopback.
    tls: TlsConfig | None = None

    @property
    def mutual_tls(self) -> bool:
        """Clients must show a certificate on the API port."""
        return self.tls is not None and self.tls.mutual

    @field_validator("cors_allow_origins")
    @classmethod
    def _origins(cls, origins: tuple[str, ...]) -> tuple[str, ...]:
        for origin in origins:
            if not ORIGIN.match(origin):
                raise ValueError(
                    f"{origin!r} is not an origin: scheme://host[:port] with no path, or *"
                )
        return origins


class CostConfig(Strict):
    """How tokens are weighted when charged to a tenant (VTC uses 1 and 2)."""

    input_weight: float = Field(1.0, ge=0)
    output_weight: float = Field(2.0, ge=0)
    chars_per_token: float = Field(4.0, gt=0)
    media_tokens: int = Field(1024, ge=0)
    default_max_tokens: int = Field(256, ge=1)


class LimitsConfig(Strict):
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    burst_seconds: float = Field(10.0, gt=0)
    tokens_per_day: float | None = Field(None, gt=0)


class TenantConfig(Strict):
    weight: float = Field(1.0, gt=0)
    priority: str | None = None
    limits: LimitsConfig = LimitsConfig()
    api_keys: tuple[str, ...] = ()
    # Names in a client certificate (URI or DNS subject alternative name, or the
    # subject's CN) that identify this tenant when listener.tls.client_ca_file is on.
    client_certificates: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None

    @field_validator("client_certificates")
    @classmethod
    def _certificate_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not CERTIFICATE_NAME.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a certificate name: a URI or DNS name, or a CN, "
                    "up to 1024 printable characters with no space at either end"
                )
        return names

    @field_validator("api_keys")
    @classmethod
    def _keys_are_hashes(cls, keys: tuple[str, ...]) -> tuple[str, ...]:
        for key in keys:
            if not SHA256_HEX.match(key):
                raise ValueError("api_keys must be sha256 hex digests (see `fairlane hash-key`)")
        return keys


class UnknownTenantsConfig(Strict):
    """Tenants not named in the policy.

    ``shared``: all of them are one tenant, ``unknown``, so rotating ids gains nothing.
    ``individual``: each gets its own fair-share state (expires when idle).
    ``reject``: 403.
    """

    mode: Literal["shared", "individual", "reject"] = "shared"
    weight: float = Field(1.0, gt=0)
    priority: str | None = None
    limits: LimitsConfig = LimitsConfig()


class StateConfig(Strict):
    """Where tenant state lives: this process only, or Redis shared by several gateways."""

    kind: Literal["local", "redis"] = "local"
    url: str = Field("redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    sync_interval_s: float = Field(0.1, gt=0, le=10)
    timeout_ms: float = Field(50.0, gt=0)


class Policy(Strict):
    version: Literal[1]
    listener: ListenerConfig = ListenerConfig()
    cost: CostConfig = CostConfig()
    priority_classes: tuple[Name, ...] = ("interactive", "batch")
    default_tenant: str | None = None
    trust_tenant_header: bool = True
    unknown_tenants: UnknownTenantsConfig = UnknownTenantsConfig()
    tenants: dict[Name, TenantConfig] = {}
    engines: dict[Name, EngineConfig] = Field(min_length=1)
    gpu_memory_budget_gb: float | None = Field(None, gt=0)
    state: StateConfig = StateConfig()

    def served_models(self) -> dict[str, str]:
        """Model name → the pool (replica group) that serves it."""
        return {
            m: pool
            for pool, engines in self.pools().items()
            for m in self.engines[engines[0]].served
        }

    def pools(self) -> dict[str, tuple[str, ...]]:
        """Replica groups: engines serving the same models, named after their first."""
        groups: dict[frozenset[str], list[str]] = {}
        for name, engine in self.engines.items():
            groups.setdefault(frozenset(engine.served), []).append(name)
        return {"+".join(names): tuple(names) for names in groups.values()}

    @property
    def api_keys_enabled(self) -> bool:
        return any(t.api_keys for t in self.tenants.values())


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()
