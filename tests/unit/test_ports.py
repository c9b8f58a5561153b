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


def _time_wait_port() -> int:
    """A port whose server closed a connection first and then stopped listening: the
    kernel keeps that connection in TIME_WAIT for a minute, as after `fairlane stop`."""
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Envoy does
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = int(server.getsockname()[1])
        with socket.create_connection(("127.0.0.1", port)) as client:
            accepted, _ = server.accept()
            accepted.close()  # the server side closes first: its side goes to TIME_WAIT
            client.recv(1)
    return port


def test_a_port_left_in_time_wait_can_be_listened_on_again() -> None:
    port = _time_wait_port()
    with socket.socket() as plain, pytest.raises(OSError):
        plain.bind(("127.0.0.1", port))  # what the old probe did: a false "in use"
    assert ports.bind_error("127.0.0.1", port) is None


def test_a_port_with_a_listener_is_reported() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        error = ports.bind_error("127.0.0.1", taken.getsockname()[1])
    assert error == "Address already in use"


def test_ports_to_avoid_are_never_offered(monkeypatch: pytest.MonkeyPatch) -> None:
    spoken_for, next_free = ports.free_port(), ports.free_port()
    monkeypatch.setattr(ports, "_candidates_left", iter([spoken_for, next_free]))
    assert ports.free_port(avoid={spoken_for}) == next_free
