"""Prometheus exposition of the simulator under vLLM's metric names.

A custom collector reads the engine's plain counters at scrape time, so serving a token
never touches prometheus_client. Each app gets its own CollectorRegistry.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..announcements import ExpectedPrompts
from ..histogram import Histogram
from .engine import SimEngine


class EngineCollector(Collector):
    """vLLM's engine metrics, labelled with the first served model name like vLLM."""

    def __init__(self, engine: SimEngine, model_name: str) -> None:
        self._engine = engine
        self._labels = [model_name]

    def collect(self) -> Iterator[Metric]:
        engine, stats = self._engine, self._engine.stats
        yield self._gauge("vllm:num_requests_running", "Requests in the batch", engine.num_running)
        yield self._gauge("vllm:num_requests_waiting", "Requests waiting", engine.num_waiting)
        yield self._gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = full)", engine.kv_usage)
        yield self._histogram("vllm:time_to_first_token_seconds", "Time to first token", stats.ttft)
        yield self._histogram("vllm:e2e_request_latency_seconds", "End-to-end latency", stats.e2e)
        yield self._counter("vllm:prompt_tokens", "Prefilled prompt tokens", stats.prompt_tokens)
        yield self._counter("vllm:generation_tokens", "Generated tokens", stats.generation_tokens)
        yield self._counter("vllm:num_preemptions", "Preemptions", stats.preemptions)
        yield from self._announcements(engine.expected)
        success = CounterMetricFamily(
            "vllm:request_success",
            "Finished requests",
            labels=["model_name", "finished_reason"],
        )
        success.add_metric([*self._labels, "length"], stats.requests_finished)
        yield success

    def _announcements(self, expected: ExpectedPrompts) -> Iterator[Metric]:
        """Fairlane's announcements (fairlane.engines.announcements), by priority level."""
        for suffix, doc, field in (
            ("", "Requests announced", "announced"),
            ("_met", "Announced requests that arrived", "met"),
            ("_in_time", "Announced requests a step was planned for before they came", "in_time"),
            ("_expired", "Announced requests that did not arrive in time", "expired"),
        ):
            metric = CounterMetricFamily(
                f"fairlane_sim_announced_requests{suffix}", doc, labels=["model_name", "level"]
            )
            for level, heard in sorted(expected.heard.items()):
                metric.add_metric([*self._labels, str(level)], getattr(heard, field))
            yield metric
        yield self._histogram(
            "fairlane_sim_announcement_lead_seconds",
            "From reading an announcement to its request's arrival",
            expected.lead,
        )

    def _gauge(self, name: str, doc: str, value: float) -> Metric:
        metric = GaugeMetricFamily(name, doc, labels=["model_name"])
        metric.add_metric(self._labels, value)
        return metric

    def _counter(self, name: str, doc: str, value: float) -> Metric:
        metric = CounterMetricFamily(name, doc, labels=["model_name"])
        metric.add_metric(self._labels, value)
        return metric

    def _histogram(self, name: str, doc: str, hist: Histogram) -> Metric:
        metric = HistogramMetricFamily(name, doc, labels=["model_name"])
        metric.add_metric(self._labels, hist.cumulative(), hist.sum)
        return metric


def build_registry(engine: SimEngine, model_name: str) -> tuple[CollectorRegistry, Counter]:
    """A registry for one app, and its counter of requests that carried ``priority``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(EngineCollector(engine, model_name))
    priority = Counter(
        "fairlane_sim_priority_requests",
        "Requests that carried a vLLM priority field",
        registry=registry,
    )
    return registry, priority
