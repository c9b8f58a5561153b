"""Policies that several test modules start their stacks with."""

from __future__ import annotations

from typing import Any

from fairlane.ports import free_port

MAX_BODY = 64 * 1024


def faults_policy(fake: Any) -> dict[str, Any]:
    """Three tenants; a simulator, a simulator with one slot, and the fake engine."""
    return {
        "version": 1,
        "tenants": {"alice": {}, "bob": {}, "carol": {}},
        "engines": {
            "big": {"kind": "sim", "preset": "a100-8b", "models": ["model-a"]},
            "one": {
                "kind": "sim",
                "preset": "a100-8b",
                "models": ["model-one"],
                "max_inflight": 1,
                "queue": {"timeout_s": 20},
            },
            "fake": fake.engine_config(),
        },
    }


def hostile_input_policy() -> dict[str, Any]:
    """A small body limit, two tenants, unknown tenants shared, one tiny simulator."""
    return {
        "version": 1,
        "listener": {"max_body_bytes": MAX_BODY},
        "tenants": {"alice": {}, "bob": {}},
        "unknown_tenants": {"mode": "shared"},
        "engines": {"fast": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
    }


def data_path_policy() -> dict[str, Any]:
    """A small body limit; a batch tenant and two with a 1,000-token burst; two simulators,
    one with injected priority (also reached as an external engine), one with one slot."""
    prio_port = free_port()
    return {
        "version": 1,
        "listener": {"max_body_bytes": MAX_BODY},
        "tenants": {
            "alice": {},
            "bob": {"priority": "batch"},
            # A burst of 1,000 tokens, 100 a second.
            "metered": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
            "refused": {"limits": {"tokens_per_minute": 6000, "burst_seconds": 10}},
        },
        "engines": {
            "big": {"kind": "sim", "preset": "a100-8b", "models": ["model-a"]},
            "small": {"kind": "sim", "preset": "h100-8b", "models": ["model-b"]},
            "prio": {
                "kind": "sim",
                "preset": "h100-8b",
                "models": ["model-p"],
                "port": prio_port,
                "args": ["--model", "model-q"],  # for prio-external, below
                "inject_priority": True,
                "linger_s": 0,  # each test's tenant alone in the pool
            },
            # The same simulator as an external engine: it gets the priority in the body.
            # By a host name, which Envoy looks up (a compose service's, say).
            "prio-external": {
                "kind": "external",
                "url": f"http://localhost:{prio_port}",
                "models": ["model-q"],
                "inject_priority": True,
                "linger_s": 0,
            },
            "one": {
                "kind": "sim",
                "preset": "a100-8b",
                "models": ["model-one"],
                "max_inflight": 1,
                "queue": {"max_per_tenant": 1, "timeout_s": 1},
            },
        },
    }
