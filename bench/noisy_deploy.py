"""Deployments for `fairlane bench noisy-neighbor`: each arm's policy, and the engine,
Redis and gateways it runs on, stopped on the way out; or the engine you run yourself."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from fairlane.bench.noisy_report import FLOODER
from fairlane.bench.stack import (
    FairlaneStack,
    Server,
    bench_policy,
    free_ports,
    start_redis,
    start_sim,
    write_policy,
)
from fairlane.bench.vllm_cpu import start_vllm_cpu
from fairlane.engine_config import DEFAULT_ENGINE_NICE, EngineConfig
from fairlane.engines.spec import scheduler_env, scheduling_flags

MODEL = "bench-model"
SYNC_INTERVAL_S = 0.1  # fair-counter sync between gateways (docs/scaling.md)
# How the shared engine is started: the engine's settings, not the gateways'.
_HOW_IT_STARTS = frozenset(
    (
        "kind",
        "preset",
        "port",
        "args",
        "nice",
        "isolate_prefills",
        "announce",
        "heavy_prefill_tokens",
    )
)


def gateway_max_inflight(total: int, gateways: int) -> int:
    """Each gateway's share of what the engine batches (docs/scaling.md, "Engine capacity
    with several gateways"): a gateway only counts its own requests."""
    return max(1, total // gateways)


def state_mode(gateways: int, local_state: bool) -> str:
    return "redis" if gateways > 1 and not local_state else "local"


@dataclass
class Deployment:
    urls: list[str]  # each gateway's listener
    control_ports: list[int]
    engine_url: str  # the (one) engine's
    pids: dict[str, int]  # by role, for CPU accounting


@contextlib.asynccontextmanager
async def deploy(
    arm: str,
    policy: dict[str, Any],
    gateways: int,
    engine_kind: str,
    work: Path,
    engine_url: str | None = None,
) -> AsyncIterator[Deployment]:
    """One ``fairlane serve`` that runs the simulator itself, or, for ``gateways`` > 1 or
    another engine, the engine (and Redis, with ``state: redis``) started here, or the
    ``external`` one at ``engine_url``, and N gateways sharing them; everything started
    here is stopped on the way out."""
    engine_url = engine_url or f"http://127.0.0.1:{policy['engines']['sim']['port']}"
    servers: list[Server] = []
    stacks: list[FairlaneStack] = []
    try:
        policies = [policy]
        if gateways > 1 or engine_kind != "sim":
            if engine_kind != "external":
                servers.append(await _start_engine(policy["engines"]["sim"], engine_kind, work))
            # All at once: ports chosen one call at a time could repeat.
            *ports, redis_port = free_ports(3 * gateways + 1)
            state: dict[str, Any] = {"kind": "local"}
            if "state" in policy:
                servers.append(await start_redis(redis_port, work))
                state = policy["state"] | {"url": f"redis://127.0.0.1:{redis_port}/0"}
            # An engine started here listens for announcements where its config says to.
            started = engine_kind != "external"
            policies = [
                gateway_policy(
                    policy, ports[3 * i : 3 * i + 3], engine_url, gateways, state, started
                )
                for i in range(gateways)
            ]
        for index, document in enumerate(policies, 1):
            port = document["listener"]["port"]
            path = write_policy(work, document, f"{arm}-{index}.yaml")
            stacks.append(FairlaneStack(path, work / f"{arm}-{index}", port))
            await stacks[-1].start()
        yield Deployment(
            urls=[f"http://127.0.0.1:{d['listener']['port']}" for d in policies],
            control_ports=[d["listener"]["control_port"] for d in policies],
            engine_url=engine_url,
            pids=_roles(stacks, servers),
        )
    finally:
        for stack in stacks:
            await stack.stop()
        for server in reversed(servers):
            await server.stop()


async def _start_engine(engine: dict[str, Any], kind: str, work: Path) -> Server:
    """The shared engine, started as ``fairlane serve`` would start a managed one."""
    args = tuple(engine.get("args", ()))
    nice = engine.get("nice")
    model = engine["models"][0]
    # As `fairlane serve` starts a managed engine with this config (engines/spec.py).
    config = EngineConfig.model_validate(engine)
    if kind == "vllm-cpu":
        # Its own flags already turn vLLM's priority policy on in every arm (it changes
        # nothing for requests without a priority); a repeated flag keeps its value.
        return await start_vllm_cpu(
            model,
            engine["port"],
            engine["max_inflight"],
            work,
            (*scheduling_flags(config, "vllm"), *args),
            DEFAULT_ENGINE_NICE if nice is None else nice,
            scheduler_env(config, "127.0.0.1", engine["port"]),
        )
    args = (*scheduling_flags(config, "sim"), *args)
    return await start_sim(engine["preset"], engine["port"], model, work, args, nice or 0)


async def check_external_engine(url: str, model: str) -> None:
    """Exit with a message unless the engine at ``url`` serves ``model``: a typo costs
    seconds, not a run of empty arms."""
    timeout = aiohttp.ClientTimeout(total=10)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url + "/v1/models") as resp,
        ):
            text = await resp.text()
            if resp.status == 401:
                raise SystemExit(
                    f"{url} wants an API key (vLLM's --api-key); the benchmark sends none: "
                    "run it against an engine started without one"
                )
            if resp.status != 200:
                raise SystemExit(f"{url}/v1/models answered {resp.status}: {text[:300]}")
            served = [m.get("id") for m in json.loads(text).get("data", [])]
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError, AttributeError) as exc:
        raise SystemExit(f"no OpenAI API at {url}: {type(exc).__name__}: {exc}") from None
    if model not in served:
        names = ", ".join(map(str, served)) or "no model"
        raise SystemExit(f"{url} serves {names}; name one of them with --model")


def _roles(stacks: list[FairlaneStack], servers: list[Server]) -> dict[str, int]:
    """One stack: its roles (and an engine started beside it). Several: ``envoy-2`` etc.,
    and the shared servers."""
    roles = {"engine" if s.name.startswith(("sim", "vllm")) else s.name: s.pid for s in servers}
    if len(stacks) == 1:
        return stacks[0].pids() | roles
    for index, stack in enumerate(stacks, 1):
        roles |= {f"{role}-{index}": pid for role, pid in stack.pids().items()}
    return roles


def gateway_policy(
    policy: dict[str, Any],
    ports: list[int],
    engine_url: str,
    gateways: int,
    state: dict[str, Any],
    started: bool = True,
) -> dict[str, Any]:
    """One of ``gateways`` gateways' policy: ``policy`` on listener ``ports`` (port, admin,
    control), its simulator turned into the shared ``external`` engine at ``engine_url``
    with its share of ``max_inflight``, and tenant state as ``state`` says. ``started``:
    the bench started that engine as the simulator's config says (announcements too)."""
    port, admin, control = ports
    announces = started and EngineConfig.model_validate(policy["engines"]["sim"]).announces
    engine = {
        key: value for key, value in policy["engines"]["sim"].items() if key not in _HOW_IT_STARTS
    }
    engine |= {
        "kind": "external",
        "url": engine_url,
        "max_inflight": gateway_max_inflight(engine["max_inflight"], gateways),
    }
    if engine.get("inject_priority"):
        engine["inject_priority"] = "header"  # how a managed sim gets it; external: the body
    if announces:
        engine["announce"] = True  # it listens: _start_engine
    listener = policy["listener"] | {"port": port, "admin_port": admin, "control_port": control}
    return policy | {"listener": listener, "engines": {"sim": engine}, "state": state}


def _isolation(choice: str) -> str | bool:
    """The policy's `isolate_prefills` for the benchmark's --isolate-prefills."""
    return False if choice == "off" else choice


def arm_policy(
    args: argparse.Namespace,
    arm: str,
    tenant_names: list[str],
    max_inflight: int,
    bucket_rpm: float | None,
) -> dict[str, Any]:
    port, admin, control, sim_port = free_ports(4)
    tenants: dict[str, Any] = {} if args.unnamed else {name: {} for name in tenant_names}
    if arm == "token-bucket":
        # Shared buckets are exact across gateways; local ones each get their share.
        shared = state_mode(args.gateways, args.local_state) == "redis"
        rpm = bucket_rpm if shared or bucket_rpm is None else bucket_rpm / args.gateways
        tenants[FLOODER] = {"limits": {"requests_per_minute": rpm}}
    engine = {
        "kind": "sim",
        "preset": args.preset,
        "port": sim_port,
        "models": [args.model],
        "max_inflight": max_inflight,
        "scheduler": "fifo" if arm in ("fifo", "token-bucket") else "fair",
        # Fair: the engine's own waiting queue also puts light tenants first.
        "inject_priority": arm == "fair",
        **({"headroom": args.headroom} if args.headroom is not None else {}),
        **({"pacing": args.pacing} if args.pacing is not None else {}),
        **({"isolate_prefills": _isolation(args.isolate_prefills)} if arm == "fair" else {}),
        **({"announce": False} if arm == "fair" and not args.announce else {}),
        **(
            {"heavy_prefill_tokens": args.heavy_prefill_tokens}
            if arm == "fair" and args.heavy_prefill_tokens
            else {}
        ),
        **({"adaptive": {}} if args.adaptive else {}),
    }
    if args.max_num_batched_tokens is not None:
        engine["args"] = ["--max-num-batched-tokens", str(args.max_num_batched_tokens)]
    if args.engine_nice is not None:
        engine["nice"] = args.engine_nice
    document = bench_policy(
        (port, admin, control),
        tenants,
        engine,
        unknown_tenants={"mode": "shared" if args.unnamed else "reject"},
    )
    if state_mode(args.gateways, args.local_state) == "redis":
        document["state"] = {"kind": "redis", "sync_interval_s": SYNC_INTERVAL_S}
    return document
