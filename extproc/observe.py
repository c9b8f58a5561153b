"""Read-side views of the gateway: Prometheus gauges at scrape time and /status."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from fairlane.extproc.gateway import Gateway
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.runtime import UNKNOWN_TENANT

LOAD_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600)


class GatewayCollector(Collector):
    """In-flight, capacity, queue depth and engine health, computed when scraped so the
    request path never touches a gauge."""

    def __init__(self, gateway: Gateway, engine_info: dict[str, dict[str, Any]]) -> None:
        self._gateway = gateway
        self._engine_info = engine_info  # the supervisor's engines.json, kept current

    def collect(self) -> Iterator[Metric]:
        g = self._gateway
        inflight = GaugeMetricFamily(
            "fairlane_inflight", "Engine slots held (one per sequence)", labels=["engine"]
        )
        capacity = GaugeMetricFamily(
            "fairlane_engine_capacity", "Current in-flight limit", labels=["engine"]
        )
        up = GaugeMetricFamily(
            "fairlane_engine_up", "1 when the engine is healthy", labels=["engine"]
        )
        depth = GaugeMetricFamily(
            "fairlane_queue_depth", "Requests waiting", labels=["engine", "tenant"]
        )
        reserved = GaugeMetricFamily(
            "fairlane_reserved_slots",
            "Slots kept for tenants under their share (headroom), per pool",
            labels=["engine"],
        )
        headroom = CounterMetricFamily(
            "fairlane_headroom_admissions",
            "Requests admitted into reserved slots, per pool",
            labels=["engine"],
        )
        for name, pool in g.pools.items():
            reserved.add_metric([name], pool.reserved)
            headroom.add_metric([name], pool.headroom_admissions)
            for replica in pool.replicas.values():
                inflight.add_metric([replica.name], replica.inflight)
                capacity.add_metric([replica.name], replica.capacity)
                up.add_metric([replica.name], 1.0 if replica.state is EngineState.UP else 0.0)
            # The queue is per pool: one fair queue feeds all replicas of a model.
            for tenant, n in _by_label(g, pool.scheduler.depths()).items():
                depth.add_metric([name, tenant], n)
        yield from (inflight, capacity, up, depth, reserved, headroom)
        yield from self._supervisor_metrics()
        yield from self._shared_state_metrics()

    def _shared_state_metrics(self) -> Iterator[Metric]:
        g = self._gateway
        parts = {"limits": g.shared_limiter, "counters": g.counter_sync}
        if not any(parts.values()):
            return
        up = GaugeMetricFamily(
            "fairlane_shared_state_up", "1 while Redis answers (state: redis)", labels=["part"]
        )
        failures = CounterMetricFamily(
            "fairlane_shared_state_failures", "Redis operations that failed", labels=["part"]
        )
        for part, client in parts.items():
            if client is not None:
                up.add_metric([part], 1.0 if client.available else 0.0)
                failures.add_metric([part], float(client.failures))
        yield up
        yield failures

    def _supervisor_metrics(self) -> Iterator[Metric]:
        counters = {
            "restarts": CounterMetricFamily(
                "fairlane_engine_restarts", "Engine restarts after a crash", labels=["engine"]
            ),
            "loads": CounterMetricFamily(
                "fairlane_model_loads", "Lazy engines loaded on demand", labels=["engine"]
            ),
            "evictions": CounterMetricFamily(
                "fairlane_model_evictions",
                "Engines unloaded to fit the GPU memory budget",
                labels=["engine"],
            ),
        }
        load_time = HistogramMetricFamily(
            "fairlane_model_load_seconds",
            "Time from an on-demand start to healthy (the supervisor's latest 64 loads)",
            labels=["engine"],
        )
        for engine, info in sorted(self._engine_info.items()):
            for key, family in counters.items():
                family.add_metric([engine], float(info.get(key, 0)))
            samples = [float(s) for s in info.get("load_seconds", [])]
            buckets = [(str(b), float(sum(1 for s in samples if s <= b))) for b in LOAD_BUCKETS] + [
                ("+Inf", float(len(samples)))
            ]
            load_time.add_metric([engine], buckets, sum_value=sum(samples))
        yield from counters.values()
        yield load_time
        looping = GaugeMetricFamily(
            "fairlane_engine_crash_looping",
            "1 while a managed engine is in a crash loop (5 exits in 5 minutes)",
            labels=["engine"],
        )
        for engine, info in sorted(self._engine_info.items()):
            looping.add_metric([engine], 1.0 if info.get("crash_loop") else 0.0)
        yield looping


def _by_label(gateway: Gateway, depths: dict[str, int]) -> dict[str, int]:
    named = gateway.runtime.tenants
    out: dict[str, int] = defaultdict(int)
    for tenant, n in depths.items():
        out[tenant if tenant in named else UNKNOWN_TENANT] += n
    return out


def snapshot(gateway: Gateway) -> dict[str, Any]:
    """Per-engine and per-tenant state for `fairlane status`."""
    tenants: dict[str, dict[str, float]] = defaultdict(
        lambda: {
            "inflight": 0,
            "queued": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "rejected": 0,
            "requests": 0,
        }
    )
    named = gateway.runtime.tenants
    for lease in gateway.leases.values():
        name = lease.ticket.tenant.name
        tenants[name if name in named else UNKNOWN_TENANT]["inflight"] += lease.queued.slots
    engines = {}
    for name, pool in gateway.pools.items():
        for replica in pool.replicas.values():
            engines[replica.name] = {
                "state": replica.state.value,
                "inflight": replica.inflight,
                "capacity": replica.capacity,
                "queued": pool.queued,
                "reserved": pool.reserved,
                "scheduler": pool.scheduler_kind,
                "pool": name,
            }
        for tenant, n in _by_label(gateway, pool.scheduler.depths()).items():
            tenants[tenant]["queued"] += n
    for metric in gateway.metrics.registry.collect():
        for sample in metric.samples:
            tenant = sample.labels.get("tenant", "")
            if not tenant or not sample.name.endswith("_total"):
                continue
            if metric.name == "fairlane_tokens":
                tenants[tenant][f"{sample.labels['kind']}_tokens"] += sample.value
            elif metric.name == "fairlane_rejected":
                tenants[tenant]["rejected"] += sample.value
            elif metric.name == "fairlane_requests":
                tenants[tenant]["requests"] += sample.value
    return {"generation": gateway.runtime.generation, "engines": engines, "tenants": dict(tenants)}
