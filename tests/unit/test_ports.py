"""fairlane.ports: free ports below the ephemeral range, none offered twice."""

from __future__ import annotations

import itertools
import socket

import pytest

from fairlane import ports


def test_ports_are_free_distinct_and_below_the_ephemeral_range() -> None:
    got = [ports.free_port() for _ in range(200)]
    assert len(set(got)) == len(got)
    assert all(ports.LOWEST <= p < ports._ephemeral_start() for p in got)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", got[-1]))  # nothing took it


def test_a_port_in_use_is_skipped() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        assert busy not in {ports.free_port() for _ in range(50)}


def test_without_room_below_the_ephemeral_range_the_kernel_picks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "_ephemeral_start", lambda: ports.LOWEST + 10)
    assert list(itertools.islice(ports._candidates(), 3)) == [0, 0, 0]
    monkeypatch.setattr(ports, "_candidates_left", ports._candidates())
    assert ports.free_port() >= 1024


def test_an_ipv6_host_gets_a_port() -> None:
    try:
        socket.socket(socket.AF_INET6).close()
    except OSError:
        pytest.skip("no IPv6 here")
    assert ports.free_port("::1") > 0
