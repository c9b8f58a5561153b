"""Adaptive in-flight limit: keep the engine busy while its own queue stays empty.

Fairlane can only be fair about requests it still holds. Every request already inside
the engine is served in the engine's order (FIFO in vLLM), so the limit should be just
high enough to keep the engine's batch full: additive increase while Fairlane is the
bottleneck and the engine reports headroom, multiplicative decrease when the engine
starts queueing (``num_requests_waiting`` above the threshold) or its KV cache is
nearly full. A larger limit buys throughput; a smaller one buys fairness and latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from fairlane.engine_config import AdaptiveConfig

# vLLM and SGLang names for the same three signals.
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs")
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage")


@dataclass(frozen=True, slots=True)
class EngineLoad:
    running: float
    waiting: float
    kv_usage: float  # 0..1


def parse_engine_metrics(text: str) -> EngineLoad | None:
    """The three signals from an engine's Prometheus text; None if it exposes none."""
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in RUNNING + WAITING + KV_USAGE:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value

    def first(names: tuple[str, ...]) -> float | None:
        return next((values[n] for n in names if n in values), None)

    running, waiting, kv = first(RUNNING), first(WAITING), first(KV_USAGE)
    if running is None and waiting is None:
        return None
    return EngineLoad(running or 0.0, waiting or 0.0, kv or 0.0)


class AdaptiveLimit:
    def __init__(self, config: AdaptiveConfig, ceiling: int) -> None:
        self.config = config
        self.ceiling = max(ceiling, config.min_inflight)
        self.limit = self.ceiling

    def update(self, load: EngineLoad, inflight: int) -> int:
        cfg = self.config
        if load.waiting > cfg.max_waiting or load.kv_usage > cfg.max_kv_usage:
            # The engine queues: give back a tenth, but never below what it runs.
            target = max(int(self.limit * 0.9), int(load.running))
            self.limit = max(cfg.min_inflight, min(self.limit, target))
        elif inflight >= self.limit:
            # Fairlane is the bottleneck and the engine has room: grow.
            self.limit = min(self.ceiling, self.limit + max(1, self.limit // 16))
        return self.limit
