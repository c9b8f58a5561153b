"""What a stranger can reach: the listening sockets (loopback and unix only), the
public paths (the API, /health and /metrics, nothing of Envoy's admin) and the HTTP/2
stream cap. The stack is the keyed one of test_security_api_keys.py
(`testkit.security.keyed_policy`).
"""

from __future__ import annotations

import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest

from fairlane.bench.cpu import running_descendants

from testkit.security import error_code, keyed_policy, request

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(stack_factory: Any, fake: Any) -> Any:
    return stack_factory(keyed_policy(fake))


def listening_tcp(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket the process listens on."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                address, port = local.split(":")
                found.add((_address(address, width), int(port, 16)))
    return found


def _address(hex_address: str, width: int) -> str:
    raw = bytes.fromhex(hex_address)
    if width == 8:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return socket.inet_ntop(socket.AF_INET6, words)


# -- sockets -------------------------------------------------------------------------------


def test_only_loopback_and_unix_sockets(stack: Any) -> None:
    listener = stack.policy["listener"]
    processes = running_descendants(stack.process.pid)
    by_role: dict[str, set[tuple[str, int]]] = {}
    for pid, argv in processes.items():
        role = "envoy" if Path(argv[0]).name == "envoy" else " ".join(argv[1:4])
        by_role.setdefault(role, set()).update(listening_tcp(pid))
    everything = set().union(*by_role.values())
    assert everything, "found no listening socket at all"
    assert {address for address, _ in everything} <= {"127.0.0.1", "::1"}, by_role
    assert ("127.0.0.1", listener["admin_port"]) in by_role["envoy"]
    assert ("127.0.0.1", listener["port"]) in by_role["envoy"]
    worker = next(v for k, v in by_role.items() if "fairlane.worker" in k)
    assert worker == {("127.0.0.1", listener["control_port"])}  # ext_proc is not on TCP

    sock = stack.run_dir / "worker.sock"
    mode = sock.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert not mode & stat.S_IWOTH, "any local user could talk to the decision service"
    unix = Path("/proc/net/unix").read_text()
    assert str(sock) in unix

    bootstrap = json.loads((stack.run_dir / "envoy.json").read_text())
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    clusters = {c["name"]: c for c in bootstrap["static_resources"]["clusters"]}
    addresses = [
        e["endpoint"]["address"]
        for c in clusters.values()
        for group in c["load_assignment"]["endpoints"]
        for e in group["lb_endpoints"]
    ]
    assert {"pipe": {"path": str(sock)}} in addresses
    assert all("pipe" in a or a["socket_address"]["address"] == "127.0.0.1" for a in addresses)


def test_public_listener_on_all_interfaces_keeps_admin_on_loopback(stack: Any) -> None:
    """Rendered offline: even `listener.host: 0.0.0.0` leaves admin and control local."""
    from fairlane.envoy.bootstrap import render_bootstrap
    from fairlane.policy import Policy
    from fairlane.rundir import RunDir

    policy = dict(stack.policy)
    policy["listener"] = {**policy["listener"], "host": "0.0.0.0"}
    rendered = json.dumps(render_bootstrap(Policy.model_validate(policy), RunDir(Path("/x"))))
    assert rendered.count('"0.0.0.0"') == 1  # the public listener only
    bootstrap = json.loads(rendered)
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


# -- public paths ----------------------------------------------------------------------------

HIDDEN = [
    "/stats",
    "/stats/prometheus",
    "/status",
    "/admin",
    "/../etc/passwd",
    "/%2e%2e/etc/passwd",
    "/server_info",
    "/config_dump",
    "/clusters",
    "/ready",
    "/quitquitquit",
    "/healthcheck/fail",
    "/drain_listeners",
    "/logging?level=trace",
    "/runtime_modify?x=1",
    "/fake/stats",
    "/v1/audio/transcriptions",
    "/v1/models/../../status",
    "/v1/models/",
    "/health/../status",
    "//status",
    "/STATUS",
    "/metrics/",
    "/v1",
    "/",
]


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_public_listener_exposes_only_the_api(stack: Any, method: str) -> None:
    for path in HIDDEN:
        status, headers, body = request(stack.port, method, path)
        assert status == 404, (method, path, status, body)
        assert error_code(status, headers, body) == "not_found", path
    admin = stack.policy["listener"]["admin_port"]
    for target in (f"http://127.0.0.1:{admin}/stats", f"http://127.0.0.1:{admin}/quitquitquit"):
        status, headers, body = request(stack.port, method, "", target=target)
        assert status == 404 and error_code(status, headers, body) == "not_found", target
    for path in ("/health", "/metrics"):
        status, _, _ = request(stack.port, "GET", path)
        assert status == 200, path
    status, headers, body = request(stack.port, "GET", "/v1/models")  # needs a key
    assert (status, error_code(status, headers, body)) == (401, "invalid_api_key")
    # Neither /quitquitquit nor /healthcheck/fail reached the admin interface.
    status, _, body = request(admin, "GET", "/ready")
    assert (status, body.strip()) == (200, b"LIVE")
    assert request(stack.port, "GET", "/health")[0] == 200


def test_metrics_can_be_kept_off_the_public_port(stack_factory: Any) -> None:
    hidden = stack_factory(
        {
            "version": 1,
            "listener": {"expose_metrics": False},
            "tenants": {"alice": {}},
            "engines": {"sim": {"kind": "sim", "preset": "tiny", "models": ["model-a"]}},
        }
    )
    status, headers, body = request(hidden.port, "GET", "/metrics")
    assert status == 404 and error_code(status, headers, body) == "not_found"
    control = hidden.policy["listener"]["control_port"]
    status, _, body = request(control, "GET", "/metrics")
    assert status == 200 and b"fairlane_config_generation" in body
    assert request(hidden.port, "GET", "/health")[0] == 200


def test_one_http2_connection_cannot_open_unbounded_streams(stack: Any) -> None:
    """The server's first SETTINGS frame caps the streams a client connection may open."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    empty_settings = (0).to_bytes(3, "big") + bytes([0x4, 0x0]) + (0).to_bytes(4, "big")
    with socket.create_connection(("127.0.0.1", stack.port), timeout=15) as sock:
        sock.sendall(preface + empty_settings)
        header = read_exactly(sock, 9)
        length, kind, flags = int.from_bytes(header[:3], "big"), header[3], header[4]
        assert (kind, flags) == (0x4, 0x0), header  # SETTINGS, not an ACK
        payload = read_exactly(sock, length)
    settings = {
        int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
        for i in range(0, length, 6)
    }
    assert settings.get(0x3) == 1024, settings


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return data
