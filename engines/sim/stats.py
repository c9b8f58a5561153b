"""Plain counters the simulator keeps; the server turns them into Prometheus metrics.

The engine only increments numbers here (no prometheus_client objects on the hot path);
a collector reads them at scrape time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..histogram import Histogram

# vLLM's bucket bounds for these two histograms, so dashboards built for vLLM work.
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
E2E_BUCKETS_S: tuple[float, ...] = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0,
)  # fmt: skip


@dataclass
class EngineStats:
    """Totals since the engine started."""

    prompt_tokens: int = 0
    generation_tokens: int = 0
    requests_finished: int = 0
    requests_aborted: int = 0
    preemptions: int = 0
    steps: int = 0
    step_seconds: float = 0.0
    """Sum of modelled step durations; with ``steps`` gives the mean step time."""
    ttft: Histogram = field(default_factory=lambda: Histogram(TTFT_BUCKETS_S))
    e2e: Histogram = field(default_factory=lambda: Histogram(E2E_BUCKETS_S))
