"""Announced prompts: the engine's record of what is on its way (``ExpectedPrompts``),
and the datagrams between the worker (``Announcer``) and the engine
(``AnnouncementSocket``) over real UDP on the loopback."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from fairlane.engine_config import EngineConfig
from fairlane.engines.announcements import (
    ADDRESS_ENV,
    COUNTED_LEVELS,
    HORIZON_S,
    MAX_EXPECTED,
    AnnouncementSocket,
    ExpectedPrompts,
    Heard,
    address_from_env,
)
from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.engines.run import launch_key
from fairlane.engines.spec import engine_spec
from fairlane.extproc.announce import Announcer
from fairlane.extproc.metrics import Metrics

LIGHT, HEAVY = 4, 3 * PRIORITY_LEVEL_SPAN + 7  # levels 0 and 3


def test_an_announced_prompt_is_expected_until_it_arrives() -> None:
    expected = ExpectedPrompts()
    assert expected.best(0.0) is None
    expected.expect(HEAVY, 0.0)
    expected.expect(LIGHT, 0.0)
    assert expected.best(0.01) == 0  # the best level on its way
    expected.arrived(LIGHT + 3, 0.02)  # another rank of the same level meets it
    assert expected.best(0.02) == 3
    expected.arrived(HEAVY, 0.03)
    assert expected.best(0.03) is None
    assert (expected.announced, expected.met) == (2, 2)


def test_a_request_nobody_announced_meets_nothing() -> None:
    expected = ExpectedPrompts()
    expected.expect(HEAVY, 0.0)
    expected.arrived(LIGHT, 0.0)  # level 0: not the one announced
    assert expected.best(0.0) == 3
    assert expected.met == 0


def test_each_arrival_meets_one_announcement() -> None:
    expected = ExpectedPrompts()
    expected.expect(LIGHT, 0.0)
    expected.expect(LIGHT, 0.01)
    expected.arrived(LIGHT, 0.02)
    assert expected.best(0.02) == 0  # the second is still on its way
    expected.arrived(LIGHT, 0.03)
    assert expected.best(0.03) is None


def test_an_unmet_announcement_expires_and_mutes_the_next_for_a_horizon() -> None:
    expected = ExpectedPrompts(horizon_s=0.1)
    expected.expect(LIGHT, 0.0)
    assert expected.best(0.099) == 0
    assert expected.best(0.1) is None  # it never came
    expected.expect(LIGHT, 0.15)
    assert expected.best(0.15) is None  # muted: phantoms hold worse prompts half the time at most
    assert expected.best(0.2) == 0  # a horizon after the expiry, honoured again
    expected.arrived(LIGHT, 0.21)
    assert expected.best(0.21) is None


def test_the_engine_counts_what_it_heard_and_how_early() -> None:
    expected = ExpectedPrompts(horizon_s=0.1)
    expected.expect(LIGHT, 0.0)
    expected.best(0.01)  # a step planned while it is on its way
    expected.arrived(LIGHT, 0.02)
    expected.expect(LIGHT, 0.1)
    expected.arrived(LIGHT, 0.1)  # heard with it, in the same gap between steps: too late
    expected.expect(HEAVY, 0.2)
    expected.best(0.31)  # never came
    expected.expect(10**19, 0.4)  # a level beyond those counted apart: with the last
    assert expected.heard == {
        0: Heard(announced=2, met=2, in_time=1),
        3: Heard(announced=1, expired=1),
        COUNTED_LEVELS - 1: Heard(announced=1),
    }
    assert (expected.announced, expected.met) == (4, 2)
    assert (expected.lead.count, expected.lead.counts[0]) == (2, 1)  # 20 ms, and 0
    assert expected.summary() == (
        "level 0: 2 announced, 2 met, 1 in time for a step planned before their request, "
        "0 expired; level 3: 1 announced, 0 met, 0 in time for a step planned before their "
        "request, 1 expired; level 7+: 1 announced, 0 met, 0 in time for a step planned "
        "before their request, 0 expired; mean lead 10.0 ms"
    )
    assert ExpectedPrompts().summary() == "none announced; mean lead 0.0 ms"


def test_a_met_announcement_mutes_nothing() -> None:
    expected = ExpectedPrompts(horizon_s=0.1)
    expected.expect(LIGHT, 0.0)
    expected.arrived(LIGHT, 0.03)
    expected.expect(LIGHT, 0.2)
    assert expected.best(0.2) == 0


def test_announcements_are_bounded() -> None:
    expected = ExpectedPrompts()
    for i in range(MAX_EXPECTED + 10):
        expected.expect(i * PRIORITY_LEVEL_SPAN, 0.0)  # as many levels as datagrams
    assert expected.announced == MAX_EXPECTED
    for i in range(MAX_EXPECTED):
        expected.arrived(i * PRIORITY_LEVEL_SPAN, 0.0)
    assert expected.best(0.0) is None
    expected.expect(LIGHT, 0.0)  # room again
    assert expected.best(0.0) == 0


@pytest.fixture
def listening() -> Iterator[AnnouncementSocket]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = AnnouncementSocket("127.0.0.1", port)
    sock.port = port  # type: ignore[attr-defined]
    yield sock
    sock.close()


def received(sock: AnnouncementSocket, count: int) -> list[int]:
    """What the socket reads within a second (loopback datagrams come at once)."""
    got: list[int] = []
    deadline = time.monotonic() + 1.0
    while len(got) < count and time.monotonic() < deadline:
        got += sock.receive()
        time.sleep(0.001)
    return got


def counted(metrics: Metrics, engine: str, outcome: str) -> float | None:
    labels = {"engine": engine, "outcome": outcome}
    return metrics.registry.get_sample_value("fairlane_announcements_total", labels)


def test_the_worker_announces_to_the_engines_that_listen(listening: AnnouncementSocket) -> None:
    metrics = Metrics()
    announcer = Announcer(metrics)
    port = listening.port  # type: ignore[attr-defined]
    announcer.listen_at({"sim": ("127.0.0.1", port)})
    announcer.announce("sim", LIGHT)
    announcer.announce("other", HEAVY)  # not listening: nothing sent
    announcer.announce("sim", HEAVY)
    assert received(listening, 2) == [LIGHT, HEAVY]
    announcer.listen_at({})  # a reload without it
    announcer.announce("sim", LIGHT)
    assert received(listening, 1) == []
    assert (counted(metrics, "sim", "sent"), counted(metrics, "sim", "failed")) == (2, 0)
    assert counted(metrics, "other", "sent") is None
    announcer.close()


def test_a_send_that_fails_is_counted_and_the_request_goes_on() -> None:
    metrics = Metrics()
    announcer = Announcer(metrics)
    # The broadcast address, from a socket not allowed to broadcast: refused at once.
    announcer.listen_at({"sim": ("255.255.255.255", 9)})
    announcer.announce("sim", LIGHT)  # no exception
    assert (counted(metrics, "sim", "sent"), counted(metrics, "sim", "failed")) == (0, 1)
    announcer.close()


def test_a_host_name_is_not_announced_to(caplog: pytest.LogCaptureFixture) -> None:
    announcer = Announcer(Metrics())
    announcer.listen_at({"sim": ("localhost", 9)})
    announcer.announce("sim", LIGHT)  # no name lookup on the request path, no error
    assert "not an IP address" in caplog.text
    announcer.close()


def test_the_engine_ignores_anything_but_a_priority(listening: AnnouncementSocket) -> None:
    port = listening.port  # type: ignore[attr-defined]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for data in (b"junk", b"-1", b"", b"7" * 40, b"12"):
            sender.sendto(data, ("127.0.0.1", port))
    assert received(listening, 1) == [12]


def test_an_arrival_reads_its_announcement_first(listening: AnnouncementSocket) -> None:
    # Sent before the request, but nobody read the socket since (an idle engine).
    expected = ExpectedPrompts(listening)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.sendto(b"%d" % LIGHT, ("127.0.0.1", listening.port))  # type: ignore[attr-defined]
    time.sleep(0.05)
    expected.arrived(LIGHT, time.monotonic())
    assert (expected.announced, expected.met) == (1, 1)
    assert expected.best(time.monotonic() + HORIZON_S) is None


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("127.0.0.1:8000", ("127.0.0.1", 8000)),
        ("::1:8000", ("::1", 8000)),
        ("[::1]:8000", ("::1", 8000)),
        ("", None),
        ("127.0.0.1", None),
        (":8000", None),
    ],
)
def test_where_the_vllm_scheduler_listens(
    monkeypatch: pytest.MonkeyPatch, value: str, address: tuple[str, int] | None
) -> None:
    monkeypatch.setenv(ADDRESS_ENV, value)
    assert address_from_env() == address


@pytest.mark.parametrize(
    ("fields", "announced"),
    [
        ({"inject_priority": True}, True),  # isolated prefills by default, announced
        ({"inject_priority": True, "isolate_prefills": "step"}, True),
        ({"inject_priority": True, "announce": False}, False),
        ({"inject_priority": True, "isolate_prefills": False}, False),  # nothing to hold
        ({}, False),
    ],
)
def test_a_managed_engine_listens_where_fairlane_announces(
    fields: dict[str, object], announced: bool
) -> None:
    sim = engine_spec("s", EngineConfig.model_validate({"kind": "sim", "models": ["m"], **fields}))
    assert ("--announcements" in sim.argv) == announced  # on its own --host and --port
    vllm = engine_spec(
        "v", EngineConfig.model_validate({"kind": "vllm", "models": ["m"], "port": 8123, **fields})
    )
    assert vllm.env.get(ADDRESS_ENV) == ("127.0.0.1:8123" if announced else None)


def test_a_reload_that_changes_announce_restarts_the_engine() -> None:
    # The engine's flags (or environment) say whether it listens.
    on = EngineConfig.model_validate({"kind": "sim", "models": ["m"], "inject_priority": True})
    assert launch_key(on) != launch_key(on.model_copy(update={"announce": False}))
