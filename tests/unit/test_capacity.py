"""The adaptive in-flight limit and the engine metrics it reads."""

from __future__ import annotations

from fairlane.engine_config import AdaptiveConfig
from fairlane.extproc.capacity import AdaptiveLimit, EngineLoad, parse_engine_metrics

VLLM = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 12.0
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.42
"""


def test_parse_vllm_and_sglang_metrics() -> None:
    assert parse_engine_metrics(VLLM) == EngineLoad(12.0, 3.0, 0.42)
    sglang = "sglang:num_running_reqs 4\nsglang:num_queue_reqs 0\nsglang:token_usage 0.1\n"
    assert parse_engine_metrics(sglang) == EngineLoad(4.0, 0.0, 0.1)
    assert parse_engine_metrics("other_metric 1\n") is None


def test_shrinks_when_the_engine_queues_and_grows_when_we_are_the_bottleneck() -> None:
    limit = AdaptiveLimit(AdaptiveConfig(min_inflight=4, max_waiting=0), ceiling=64)
    assert limit.limit == 64
    for _ in range(50):
        limit.update(EngineLoad(running=20, waiting=5, kv_usage=0.5), inflight=64)
    assert limit.limit == 20  # never below what the engine actually runs
    limit.update(EngineLoad(running=20, waiting=0, kv_usage=0.5), inflight=10)
    assert limit.limit == 20  # not saturated: no reason to grow
    for _ in range(100):
        limit.update(EngineLoad(running=limit.limit, waiting=0, kv_usage=0.5), limit.limit)
    assert limit.limit == 64  # capped by max_inflight


def test_kv_pressure_shrinks_and_floor_holds() -> None:
    limit = AdaptiveLimit(AdaptiveConfig(min_inflight=4, max_kv_usage=0.8), ceiling=16)
    for _ in range(100):
        limit.update(EngineLoad(running=0, waiting=0, kv_usage=0.95), inflight=16)
    assert limit.limit == 4
