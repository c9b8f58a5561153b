"""Fairlane's Prometheus metrics, one registry per worker (no globals).

Label cardinality is bounded by construction: ``tenant`` is a tenant named in the
policy or ``unknown``; ``model`` and ``engine`` come from the policy. A storm of random
tenant ids therefore cannot grow ``/metrics``.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1, 2, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}
        r = self.registry
        self.requests = Counter(
            "fairlane_requests",
            "Requests decided, by outcome",
            ["tenant", "model", "outcome"],
            registry=r,
        )
        self.rejected = Counter(
            "fairlane_rejected",
            "Requests refused by Fairlane, by reason",
            ["tenant", "reason"],
            registry=r,
        )
        self.tokens = Counter(
            "fairlane_tokens",
            "Tokens served (kind: prompt|completion)",
            ["tenant", "model", "kind"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "fairlane_queue_wait_seconds",
            "Time from arrival to admission",
            ["tenant"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "fairlane_ttft_seconds",
            "Time to first response byte of chat and completions streams, measured by Envoy",
            ["tenant", "model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.config_generation = Gauge(
            "fairlane_config_generation", "Generation of the live policy", registry=r
        )
        self.config_reload_failures = Counter(
            "fairlane_config_reload_failures", "Policy reloads refused", registry=r
        )
        self.announcements = Counter(
            "fairlane_announcements",
            "Datagrams to an engine's scheduler ahead of the requests they announce, by "
            "outcome (sent|failed)",
            ["engine", "outcome"],
            registry=r,
        )
        self.leases_expired = Counter(
            "fairlane_leases_expired",
            "Slots reclaimed because no end-of-request record arrived in time",
            registry=r,
        )
        self.leases_withdrawn = Counter(
            "fairlane_leases_withdrawn",
            "Slots given back because the client left before the decision reached Envoy",
            registry=r,
        )
        self.quarantines = Counter(
            "fairlane_engine_quarantines",
            "Times a replica was taken out for failing a request it never received",
            ["engine"],
            registry=r,
        )

    def child(self, metric: Counter | Histogram, *labels: str) -> Any:
        """``metric.labels(*labels)``, cached: labels() costs a lock and a dict build per
        call, on every request. Bounded: label values are policy names only."""
        key = (metric, labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def add_collector(self, collector: Collector) -> None:
        """Gauges read at scrape time (queue depth, in flight) instead of on every request."""
        self.registry.register(collector)
