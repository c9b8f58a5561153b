"""The policy compiled into lookup tables for the hot path.

Built once per policy generation and swapped atomically on reload; everything a decision
needs is a dict lookup here, nothing iterates over tenants or models.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass

from fairlane.engine_config import EngineConfig
from fairlane.engine_keys import engine_keys
from fairlane.extproc.limits import TenantLimits
from fairlane.extproc.replicas import reserved_slots
from fairlane.policy import LimitsConfig, Policy

UNKNOWN_TENANT = "unknown"
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")


@dataclass(frozen=True, slots=True)
class TenantProfile:
    """How one tenant (or the shared unknown class) is treated."""

    name: str  # the key its fair-share, limit and metric state lives under
    weight: float
    priority: int
    limits: TenantLimits | None
    allowed_models: frozenset[str] | None
    named: bool  # named in the policy: gets its own metric labels


def to_limits(config: LimitsConfig) -> TenantLimits | None:
    if (
        config.requests_per_minute is None
        and config.tokens_per_minute is None
        and config.tokens_per_day is None
    ):
        return None
    return TenantLimits(
        requests_per_minute=config.requests_per_minute,
        tokens_per_minute=config.tokens_per_minute,
        burst_seconds=config.burst_seconds,
        tokens_per_day=config.tokens_per_day,
    )


@dataclass(frozen=True)
class Runtime:
    policy: Policy
    generation: int
    tenants: dict[str, TenantProfile]
    unknown: TenantProfile
    key_to_tenant: dict[str, str]
    certificate_to_tenant: dict[str, str]  # a name in a client certificate → its tenant
    model_to_pool: dict[str, str]
    pools: dict[str, tuple[str, ...]]  # pool → its engines (replicas)
    # pool → the most sequences one generation may ask for (``widest_request``)
    widest_requests: dict[str, int]
    engine_auth: dict[str, str]  # engine → the Authorization it wants (api_key_env)

    @property
    def api_keys_enabled(self) -> bool:
        return bool(self.key_to_tenant)

    def engine(self, name: str) -> EngineConfig:
        return self.policy.engines[name]

    def pool_config(self, pool: str) -> EngineConfig:
        """Queue and scheduler settings of a pool (replicas must agree on them)."""
        return self.policy.engines[self.pools[pool][0]]

    def profile_for(self, tenant_id: str) -> TenantProfile | None:
        """The profile of a tenant id, or None when unknown tenants are rejected."""
        named = self.tenants.get(tenant_id)
        if named is not None:
            return named
        mode = self.policy.unknown_tenants.mode
        if mode == "reject":
            return None
        if mode == "shared":
            return self.unknown
        # individual: own fair-share state, but shared limits config and metric label.
        u = self.unknown
        return TenantProfile(
            f"{UNKNOWN_TENANT}:{tenant_id}", u.weight, u.priority, u.limits, None, False
        )


def compile_policy(
    policy: Policy, generation: int, environ: Mapping[str, str] = os.environ
) -> Runtime:
    """Raises PolicyError when an engine's api_key_env is not set in ``environ``."""
    ranks = {name: rank for rank, name in enumerate(policy.priority_classes)}

    def rank(cls: str | None) -> int:
        return ranks[cls] if cls is not None else 0

    tenants = {
        name: TenantProfile(
            name=name,
            weight=t.weight,
            priority=rank(t.priority),
            limits=to_limits(t.limits),
            allowed_models=frozenset(t.models) if t.models is not None else None,
            named=True,
        )
        for name, t in policy.tenants.items()
    }
    u = policy.unknown_tenants
    unknown = TenantProfile(
        UNKNOWN_TENANT, u.weight, rank(u.priority), to_limits(u.limits), None, False
    )
    keys = {key: name for name, t in policy.tenants.items() for key in t.api_keys}
    certificates = {
        cert: name for name, t in policy.tenants.items() for cert in t.client_certificates
    }
    pools = policy.pools()
    return Runtime(
        policy=policy,
        generation=generation,
        tenants=tenants,
        unknown=unknown,
        key_to_tenant=keys,
        certificate_to_tenant=certificates,
        model_to_pool=policy.served_models(),
        pools=pools,
        widest_requests={pool: widest_request(policy, names) for pool, names in pools.items()},
        engine_auth={name: f"Bearer {key}" for name, key in engine_keys(policy, environ).items()},
    )


def widest_request(policy: Policy, replicas: tuple[str, ...]) -> int:
    """The most sequences one generation may ask for: what one tenant may fill of the
    pool's widest replica, its max_inflight less the slots ``headroom`` keeps for light
    tenants (so that one of them still runs beside it at once)."""
    config = policy.engines[replicas[0]]  # replicas agree on scheduler and headroom
    keep = config.headroom if config.scheduler == "fair" else 0.0
    limits = (policy.engines[name].max_inflight for name in replicas)
    return max(limit - reserved_slots(limit, keep) for limit in limits)
