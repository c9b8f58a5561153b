"""What a stranger can reach: listening sockets, public paths, API keys and where keys go.

Keys are made up for the test; the policy holds their sha256 (`fairlane hash-key`).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import secrets
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fairlane.bench.cpu import running_descendants

pytestmark = pytest.mark.integration

CHAT = "/v1/chat/completions"
INFERENCE = (CHAT, "/v1/completions")
KEY_A = "sk-alice-" + secrets.token_hex(16)
KEY_B = "sk-bob-" + secrets.token_hex(16)


def hash_key(key: str) -> str:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.cli", "hash-key", key],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


@pytest.fixture(scope="module")
def fake(fake_engine_factory: Any) -> Any:
    return fake_engine_factory()


@pytest.fixture(scope="module")
def stack(stack_factory: Any, fake: Any) -> Any:
    return stack_factory(
        {
            "version": 1,
            "tenants": {
                "alice": {"api_keys": [hash_key(KEY_A)]},
                "bob": {"api_keys": [hash_key(KEY_B)], "models": ["model-a"]},
            },
            "engines": {
                "sim": {"kind": "sim", "preset": "tiny", "models": ["model-a"]},
                "fake": fake.engine_config(),
            },
        }
    )


# -- helpers (test modules cannot share them: --import-mode=importlib) -----------------


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    target: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange: the path goes out exactly as given (no normalising)."""
    lines = [f"{method} {target or path} HTTP/1.1", "Host: fairlane", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    lines.append(f"Content-Length: {len(body)}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(raw)
        resp = http.client.HTTPResponse(sock, method=method)
        resp.begin()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()


def chat_body(model: str = "model-a") -> bytes:
    body = {"model": model, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps(body).encode()


def error_code(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("content-type") == "application/json", (status, headers, body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return str(error["code"])


def metric(port: int, name: str, **labels: str) -> float:
    _, _, body = request(port, "GET", "/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        series, _, number = line.rpartition(" ")
        if series.split("{")[0] == name and all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(number)
    return total


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


# -- API keys -----------------------------------------------------------------------------------

BAD_CREDENTIALS: list[dict[str, str]] = [
    {},
    {"Authorization": "Bearer sk-wrong"},
    {"Authorization": "Bearer "},
    {"Authorization": f"Basic {KEY_A}"},
    {"Authorization": KEY_A},
    {"Authorization": f"Bearer {KEY_A}x"},
    {"Authorization": f"Bearer {KEY_A[:-1]}"},
    {"Authorization": f"Bearer {hashlib.sha256(KEY_A.encode()).hexdigest()}"},  # the stored hash
    {"X-Api-Key": "sk-wrong"},
    {"X-Api-Key": f"Bearer {KEY_A}"},  # the header holds the bare key
    {"Authorization": "Bearer sk-wrong", "X-Api-Key": KEY_A},  # the Bearer one is read
    {"X-Tenant-ID": "alice"},
    {"X-Tenant-ID": "alice", "Authorization": "Bearer sk-wrong"},
]


def test_no_route_reaches_an_engine_without_a_valid_key(stack: Any, fake: Any) -> None:
    reached = fake.stats()["requests"]
    served = metric(stack.port, "fairlane_requests_total")
    for path in INFERENCE:
        for model in ("model-a", "fake-echo"):
            for headers in BAD_CREDENTIALS:
                headers = {"Content-Type": "application/json", **headers}
                status, got, body = request(stack.port, "POST", path, headers, chat_body(model))
                assert status == 401, (path, headers, status, body)
                assert error_code(status, got, body) == "invalid_api_key"
    assert fake.stats()["requests"] == reached
    assert metric(stack.port, "fairlane_requests_total") == served
    assert metric(stack.port, "fairlane_rejected_total", reason="invalid_api_key") >= 4 * len(
        BAD_CREDENTIALS
    )


def test_tenant_header_cannot_override_the_key(stack: Any, fake: Any) -> None:
    before = {t: metric(stack.port, "fairlane_requests_total", tenant=t) for t in ("alice", "bob")}
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {KEY_A}",
        "X-Tenant-ID": "bob",
    }
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert status == 200, body
    seen = fake.stats()["headers"][-1]
    assert seen["x-tenant-id"] == "alice"  # rewritten from the key
    assert "authorization" not in seen  # the key never reaches the engine
    assert KEY_A not in json.dumps(seen)
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("model-a"))
    assert status == 200, body

    deadline = time.monotonic() + 5
    while metric(stack.port, "fairlane_requests_total", tenant="alice") < before["alice"] + 2:
        assert time.monotonic() < deadline, "the requests were not counted for alice"
        time.sleep(0.05)
    assert metric(stack.port, "fairlane_requests_total", tenant="bob") == before["bob"]
    entries = _access_log(stack, lambda e: e["path"] == CHAT and e["status"] == 200, 2)
    assert {e["tenant"] for e in entries} == {"alice"}


def test_anthropics_x_api_key_header_is_a_key_too(stack: Any, fake: Any) -> None:
    """Anthropic's SDKs send the key as `x-api-key`: it names the tenant as a Bearer key
    does, and is removed before the engine as well."""
    headers = {"Content-Type": "application/json", "X-Api-Key": KEY_B, "X-Tenant-ID": "alice"}
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("model-a"))
    assert status == 200, body
    status, got, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert (status, error_code(status, got, body)) == (403, "model_not_allowed")  # bob's key
    headers["X-Api-Key"] = KEY_A
    status, _, body = request(stack.port, "POST", CHAT, headers, chat_body("fake-echo"))
    assert status == 200, body
    seen = fake.stats()["headers"][-1]
    assert seen["x-tenant-id"] == "alice" and "x-api-key" not in seen
    assert KEY_A not in json.dumps(seen)


def _access_log(stack: Any, keep: Any, want: int) -> list[dict[str, Any]]:
    """Entries of DIR/access.log that `keep` accepts, once there are `want` of them."""
    admin = stack.policy["listener"]["admin_port"]
    deadline = time.monotonic() + 15
    while True:
        request(admin, "POST", "/reopen_logs")  # flushes the access log now
        path = stack.run_dir / "access.log"
        # Only whole lines: Envoy may be writing the last one right now.
        lines = path.read_text().split("\n")[:-1] if path.exists() else []
        entries = [e for e in map(json.loads, filter(None, lines)) if keep(e)]
        if len(entries) >= want or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_keys_never_written_anywhere(stack: Any) -> None:
    for key in (KEY_A, KEY_B):
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
        assert request(stack.port, "POST", CHAT, headers, chat_body())[0] == 200
        bad = {"Content-Type": "application/json", "Authorization": f"Bearer {key}-not"}
        assert request(stack.port, "POST", CHAT, bad, chat_body())[0] == 401
    _access_log(stack, lambda e: e["status"] == 401, 2)  # flushed past those requests
    texts = {
        str(path): path.read_bytes().decode("utf-8", "replace")
        for path in stack.run_dir.parent.rglob("*")
        if path.is_file() and not stat.S_ISSOCK(path.stat().st_mode)
    }
    control = stack.policy["listener"]["control_port"]
    texts["/metrics"] = request(stack.port, "GET", "/metrics")[2].decode()
    texts["control /status"] = request(control, "GET", "/status")[2].decode()
    assert any("access.log" in name for name in texts)
    for key in (KEY_A, KEY_B):
        for name, text in texts.items():
            assert key not in text, f"an API key is written in {name}"
            assert key[: len(key) // 2] not in text, f"part of an API key is in {name}"


def test_every_answer_names_the_request_the_access_log_records(stack: Any) -> None:
    agent = {"Content-Type": "application/json", "User-Agent": "probe/1.0"}
    good = {**agent, "Authorization": f"Bearer {KEY_A}"}
    bad = {**agent, "Authorization": "Bearer not-a-key"}
    ids = {}
    for headers, path, model in (
        (good, CHAT, "model-a"),
        (good, CHAT, "nope"),  # refused by Fairlane, after it knew whose request it was
        (bad, CHAT, "model-a"),
        (good, "/v1/nothing", "model-a"),
    ):
        status, reply, _ = request(stack.port, "POST", path, headers, chat_body(model))
        ids[reply["x-request-id"]] = (path, status)
    assert sorted(ids.values()) == [
        (CHAT, 200),
        (CHAT, 401),
        (CHAT, 404),
        ("/v1/nothing", 404),
    ]
    logged = _access_log(stack, lambda e: e["request_id"] in ids, len(ids))
    assert {e["request_id"]: (e["path"], e["status"]) for e in logged} == ids
    assert {(e["client"], e["user_agent"]) for e in logged} == {("127.0.0.1", "probe/1.0")}
    tenants = {(e["path"], e["status"]): e["tenant"] for e in logged}
    assert tenants == {
        (CHAT, 200): "alice",
        (CHAT, 404): "alice",
        (CHAT, 401): None,  # no valid key: nobody
        ("/v1/nothing", 404): None,  # answered by Envoy's route, never identified
    }


def test_each_key_lists_the_models_its_tenant_may_use(stack: Any, fake: Any) -> None:
    def get(path: str, key: str | None) -> tuple[int, dict[str, str], bytes]:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        return request(stack.port, "GET", path, headers)

    for key in (None, "sk-wrong", KEY_A + "x"):
        for path in ("/v1/models", "/v1/models/model-a"):
            status, headers, body = get(path, key)
            assert (status, error_code(status, headers, body)) == (401, "invalid_api_key")
    everything = {"model-a", *fake.MODELS}
    for key, allowed in ((KEY_A, everything), (KEY_B, {"model-a"})):
        status, _, body = get("/v1/models", key)
        assert status == 200
        assert {m["id"] for m in json.loads(body)["data"]} == allowed
        for model in sorted(everything):
            status, headers, body = get(f"/v1/models/{model}", key)
            if model in allowed:
                assert (status, json.loads(body)["id"]) == (200, model)
            else:  # as if it did not exist: no way to learn what others may use
                assert (status, error_code(status, headers, body)) == (404, "model_not_found")


ENGINE_KEY = "sk-engine-" + secrets.token_hex(16)


def test_an_engine_with_its_own_key_gets_it_in_place_of_the_clients(
    stack_factory: Any, fake: Any
) -> None:
    """vLLM started with --api-key behind Fairlane's own keys: the client's key stays at
    the gateway, the engine's (from serve's environment) goes to the engine, and neither
    is written anywhere."""
    engine = {**fake.engine_config(), "api_key_env": "FAIRLANE_TEST_ENGINE_KEY"}
    policy = {
        "version": 1,
        "tenants": {"alice": {"api_keys": [hash_key(KEY_A)]}},
        "engines": {"fake": engine},
    }
    keyed = stack_factory(policy, env={"FAIRLANE_TEST_ENGINE_KEY": ENGINE_KEY})
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {KEY_A}"}
    for _ in range(2):  # the second one takes the worker's cached header mutation
        status, _, body = request(keyed.port, "POST", CHAT, headers, chat_body("fake-echo"))
        assert status == 200, body
        seen = fake.stats()["headers"][-1]
        assert seen["authorization"] == f"Bearer {ENGINE_KEY}"
        assert KEY_A not in json.dumps(seen)
    _access_log(keyed, lambda e: e["path"] == CHAT and e["status"] == 200, 2)
    for path in keyed.run_dir.parent.rglob("*"):
        if path.is_file() and not stat.S_ISSOCK(path.stat().st_mode):
            text = path.read_bytes().decode("utf-8", "replace")
            assert ENGINE_KEY[10:26] not in text, f"the engine's key is written in {path}"
            assert KEY_A[9:25] not in text, f"a client key is written in {path}"


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
