"""What the noisy-neighbour benchmark reads from the engine beside the load: its queue,
and on the simulator, Fairlane's announcements by level over the measured window."""

from __future__ import annotations

from typing import Any, cast

from fairlane.bench.engine_watch import EngineWatcher, announcement_counts, announcements_heard

METRICS = """\
# HELP fairlane_sim_announced_requests_total Requests announced
# TYPE fairlane_sim_announced_requests_total counter
fairlane_sim_announced_requests_total{{model_name="m",level="0"}} {light}
fairlane_sim_announced_requests_total{{model_name="m",level="1"}} 40.0
fairlane_sim_announced_requests_met_total{{model_name="m",level="0"}} {light}
fairlane_sim_announced_requests_met_total{{model_name="m",level="1"}} 40.0
fairlane_sim_announced_requests_in_time_total{{model_name="m",level="0"}} {in_time}
fairlane_sim_announced_requests_in_time_total{{model_name="m",level="1"}} 2.0
fairlane_sim_announced_requests_expired_total{{model_name="m",level="0"}} 0.0
fairlane_sim_announced_requests_expired_total{{model_name="m",level="1"}} 0.0
fairlane_sim_announcement_lead_seconds_count{{model_name="m"}} 50.0
vllm:num_requests_running{{model_name="m"}} 7.0
"""


def counts(light: int, in_time: int) -> dict[str, dict[str, float]]:
    return announcement_counts(METRICS.format(light=float(light), in_time=float(in_time)))


def test_the_simulators_counters_are_read_by_level() -> None:
    assert counts(10, 8) == {
        "0": {"announced": 10, "met": 10, "in_time": 8, "expired": 0},
        "1": {"announced": 40, "met": 40, "in_time": 2, "expired": 0},
    }
    assert announcement_counts('vllm:num_requests_running{model_name="m"} 7.0') == {}


def test_the_window_counts_only_announcements_heard_inside_it() -> None:
    watcher = EngineWatcher(cast(Any, None), "http://127.0.0.1:1")
    watcher.samples = [
        (0.5, 9, 9, counts(5, 1)),  # warm-up: left out
        (1.0, 0, 4, counts(10, 2)),
        (2.0, 2, 6, counts(30, 17)),
        (3.5, 9, 9, counts(99, 99)),  # after the window
    ]
    summary = watcher.summary(1.0, 3.0)
    assert summary == {
        "max_waiting": 2,
        "mean_waiting": 1,
        "mean_running": 5,
        "max_running": 6,
        "announcements": {
            "0": {"announced": 20, "met": 20, "in_time": 15, "expired": 0},
            "1": {"announced": 0, "met": 0, "in_time": 0, "expired": 0},
        },
    }
    assert announcements_heard({"fair": {"engine": summary}, "solo": {"engine": {}}}) == [
        "fair: the engine heard 20 announcements of level 0: 20 met, 15 in time for a step "
        "planned before their request, 0 expired\n"
        "fair: the engine heard 0 announcements of level 1: 0 met, 0 in time for a step "
        "planned before their request, 0 expired"
    ]


def test_an_engine_that_hears_none_reports_its_queue_only() -> None:
    watcher = EngineWatcher(cast(Any, None), "http://127.0.0.1:1")
    watcher.samples = [(1.0, 1, 3, {}), (2.0, 3, 5, {})]
    assert "announcements" not in watcher.summary(0.0, 10.0)
    assert watcher.summary(20.0, 30.0)["max_waiting"] == 0  # no sample inside: zeros
    assert announcements_heard({"fair": {"engine": watcher.summary(0.0, 10.0)}}) == []
