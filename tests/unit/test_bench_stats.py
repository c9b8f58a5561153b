"""The benchmarks' arithmetic: percentiles, ratios, goodput, windows, Poisson arrivals."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from fairlane.bench.loadgen import Workload, arrival_schedule
from fairlane.bench.noisy_neighbor import default_max_inflight
from fairlane.bench.records import RequestRecord, RunResult
from fairlane.bench.report import table
from fairlane.bench.stats import (
    difference,
    goodput,
    lag_ok,
    per_unit,
    percentile,
    poisson_arrivals,
    ratio,
    summarize,
    tenant_rng,
)


def test_percentile_interpolates_between_order_statistics() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(v) for v in range(1, 101)], 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) is None


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_summarize_scales_and_handles_empty() -> None:
    s = summarize([0.010, 0.020, 0.030], 1000.0)
    assert s["count"] == 3
    assert s["p50"] == pytest.approx(20.0)
    assert s["max"] == pytest.approx(30.0)
    assert s["mean"] == pytest.approx(20.0)
    assert summarize([]) == {"count": 0, "p50": None, "p99": None, "max": None, "mean": None}


def test_ratio_and_difference_propagate_missing_values() -> None:
    assert ratio(99.0, 100.0) == pytest.approx(0.99)
    assert ratio(1.0, 0.0) is None
    assert ratio(None, 2.0) is None
    assert ratio(2.0, None) is None
    assert difference(50.5, 50.0) == pytest.approx(0.5)
    assert difference(None, 1.0) is None


def test_goodput_and_per_unit() -> None:
    assert goodput(30_000, 120.0) == 250.0
    assert goodput(0, 1.0) == 0.0
    with pytest.raises(ValueError):
        goodput(10, 0.0)
    assert per_unit(1.5, 3) == 0.5
    assert per_unit(1.5, 0) is None


def test_lag_must_be_small_against_the_latency_measured() -> None:
    assert lag_ok(2.0, 50.0)
    assert not lag_ok(6.0, 50.0)
    assert lag_ok(None, 50.0)
    assert lag_ok(6.0, None)


def test_poisson_arrivals_are_seeded_sorted_and_inside_the_horizon() -> None:
    first = poisson_arrivals(5.0, 100.0, random.Random(7))
    again = poisson_arrivals(5.0, 100.0, random.Random(7))
    assert first == again
    assert first == sorted(first)
    assert all(0 <= t < 100.0 for t in first)
    assert poisson_arrivals(5.0, 100.0, random.Random(8)) != first
    assert poisson_arrivals(0.0, 100.0, random.Random(7)) == []


def test_poisson_arrivals_have_the_asked_rate_and_exponential_gaps() -> None:
    rate, horizon = 50.0, 200.0
    times = poisson_arrivals(rate, horizon, random.Random(1))
    expected = rate * horizon  # Poisson: variance = mean, so 4 sigma = 4 * sqrt(10000)
    assert abs(len(times) - expected) < 4 * math.sqrt(expected)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    mean = sum(gaps) / len(gaps)
    assert mean == pytest.approx(1 / rate, rel=0.05)
    # Exponential: the standard deviation equals the mean.
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert sd == pytest.approx(mean, rel=0.1)


def test_each_tenant_gets_its_own_reproducible_stream() -> None:
    a = poisson_arrivals(1.0, 50.0, tenant_rng(3, 0))
    b = poisson_arrivals(1.0, 50.0, tenant_rng(3, 1))
    assert a != b
    assert a == poisson_arrivals(1.0, 50.0, tenant_rng(3, 0))


def _result(records: list[RequestRecord]) -> RunResult:
    return RunResult(
        records=records,
        window=(10.0, 20.0),
        window_tokens={},
        lag_s=[],
        send_lag_s=[],
        unfinished=0,
    )


def test_window_counts_sends_for_latency_and_ends_for_throughput() -> None:
    records = [
        RequestRecord("a", sent=5.0, ttft=0.1, end=12.0, tokens=4, status=200),  # warm-up
        RequestRecord("a", sent=11.0, ttft=0.1, end=19.0, tokens=4, status=200),
        RequestRecord("b", sent=15.0, ttft=0.1, end=25.0, tokens=4, status=200),  # ends late
        RequestRecord("b", sent=16.0, end=16.1, status=429, error="rate limited"),
    ]
    result = _result(records)
    assert result.seconds == 10.0
    assert [r.sent for r in result.measured()] == [11.0, 15.0, 16.0]
    assert [r.sent for r in result.measured("b")] == [15.0, 16.0]
    assert [r.sent for r in result.completed()] == [5.0, 11.0]
    assert not records[3].ok


def test_workload_prompt_has_the_asked_number_of_words() -> None:
    workload = Workload("http://127.0.0.1:1", "m", prompt_words=400, max_tokens=256)
    assert len(workload.prompt().split()) == 400
    assert len(workload.prompt()) == 400 * 5 - 1
    assert b'"stream": true' in workload.body(256)
    assert workload.lengths() == [256]


def test_spread_lengths_keep_the_mean() -> None:
    workload = Workload("http://x:1", "m", 10, max_tokens=256, max_tokens_spread=0.5)
    lengths = workload.lengths()
    assert lengths[0] == 128 and lengths[-1] == 384 and len(lengths) == 9
    assert sum(lengths) / len(lengths) == 256


def test_default_max_inflight_is_the_batch_limit_unless_the_kv_cache_is_smaller() -> None:
    assert default_max_inflight("a100-8b", 508, 256) == 256  # 256 x 764 tokens fit
    assert default_max_inflight("l4-8b", 508, 256) == 70  # 0.9 x 60k / 764
    assert default_max_inflight("tiny", 4000, 2000) == 1


def test_table_aligns_columns() -> None:
    text = table(["a", "long header"], [["1", "2"], ["333", "4"]])
    lines = text.splitlines()
    assert lines[0] == "| a   | long header |"
    assert lines[1] == "|-----|-------------|"
    assert lines[3] == "| 333 | 4           |"


def test_a_late_start_leaves_out_the_sends_before_it_and_keeps_the_rest() -> None:
    """`--quiet-late`: the quiet tenant sends nothing in the warm-up, and after it the
    same seeded times as when it starts with the flooder."""
    rates = {"quiet-1": 1.0, "flooder": 32.0}
    together = arrival_schedule(rates, seed=2, horizon_s=60.0, starts={})
    late = arrival_schedule(rates, seed=2, horizon_s=60.0, starts={"quiet-1": 20.0})
    quiet_late = [t for t, tenant in late if tenant == "quiet-1"]
    assert quiet_late and min(quiet_late) >= 20.0
    assert quiet_late == [t for t, tenant in together if tenant == "quiet-1" and t >= 20.0]
    assert [x for x in late if x[1] == "flooder"] == [x for x in together if x[1] == "flooder"]
    assert late == sorted(late)
