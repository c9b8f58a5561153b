"""The `fairlane` command's offline subcommands, run as a user would."""

from __future__ import annotations

import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

from fairlane import __version__
from fairlane.policy import hash_key

from testkit.certs import ThrowawayCA

ROOT = Path(__file__).resolve().parents[2]


def fairlane(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def test_version() -> None:
    result = fairlane("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"fairlane {__version__}"


def test_hash_key_matches_the_policy_hash() -> None:
    result = fairlane("hash-key", "sk-test")
    assert result.returncode == 0
    assert result.stdout.strip() == hash_key("sk-test")


def test_doctor_reports_envoy_and_ports(tmp_path: Path) -> None:
    result = fairlane("doctor", "--config", "configs/quickstart.yaml")
    assert "envoy" in result.stdout and "1.40.0" in result.stdout
    assert "gpu" in result.stdout


def test_doctor_fails_when_a_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\nlistener: {{port: {port}}}\nengines:\n  e: {{kind: sim, models: [m]}}\n"
        )
        result = fairlane("doctor", "--config", str(policy))
    assert result.returncode == 1
    assert f"port {port} (listener): in use" in result.stdout


def test_doctor_checks_the_https_certificate_and_the_clients_ca(tmp_path: Path) -> None:
    ThrowawayCA(tmp_path).issue(tmp_path / "cert.pem", tmp_path / "key.pem")
    tls = (
        f"{{cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}, "
        f"client_ca_file: {tmp_path / 'clients.pem'}}}"
    )
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"version: 1\nlistener: {{tls: {tls}}}\nengines:\n  e: {{kind: sim, models: [m]}}\n"
    )
    result = fairlane("doctor", "--config", str(policy))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert f"[     ok] https certificate: {tmp_path / 'cert.pem'} loads with its key" in lines
    assert (
        f"[MISSING] client certificate CAs: listener.tls.client_ca_file "
        f"{tmp_path / 'clients.pem'}: cannot read: No such file or directory"
    ) in lines


def test_doctor_suggests_a_step_budget_only_where_priority_is_on_and_it_is_unset(
    tmp_path: Path,
) -> None:
    policy = tmp_path / "p.yaml"
    engines = (
        "  plain: {kind: sim, models: [a], inject_priority: true}\n"
        "  tuned: {kind: sim, models: [b], inject_priority: true,"
        " args: [--max-num-batched-tokens=768]}\n"
        "  fifo: {kind: sim, models: [c]}\n"
    )
    policy.write_text(f"version: 1\nengines:\n{engines}")
    result = fairlane("doctor", "--config", str(policy))
    assert "[   info] engine plain: priority puts a light tenant's prompt first" in result.stdout
    assert "engine tuned:" not in result.stdout
    assert "engine fifo:" not in result.stdout


def test_doctor_fails_on_an_adapter_path_with_no_adapter(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir()
    (tmp_path / "alice" / "adapter_config.json").write_text("{}")
    adapters = f"{{alice: {tmp_path / 'alice'}, bob: {tmp_path / 'bob'}, carol: org/carol}}"
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"version: 1\nengines:\n  e: {{kind: vllm, models: [m], adapters: {adapters}}}\n"
    )
    result = fairlane("doctor", "--config", str(policy))
    assert result.returncode == 1
    assert f"[MISSING] engine e adapter: bob: no adapter_config.json in {tmp_path / 'bob'}" in (
        result.stdout
    )
    assert "alice:" not in result.stdout and "carol" not in result.stdout  # a hub id


def test_doctor_fails_when_vllm_is_needed_but_missing(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text("version: 1\nengines:\n  e: {kind: vllm, models: [m]}\n")
    result = fairlane("doctor", "--config", str(policy))
    if importlib.util.find_spec("vllm") is None:
        assert result.returncode == 1
        assert "[MISSING] vllm: not installed" in result.stdout
    else:  # the e2e environment
        assert "[     ok] vllm: installed" in result.stdout


def test_reload_without_a_running_instance(tmp_path: Path) -> None:
    result = fairlane("reload", "--config", "configs/quickstart.yaml", "--run-dir", str(tmp_path))
    assert result.returncode == 1
    assert "no running fairlane found" in result.stderr


def test_serve_refuses_a_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        policy = tmp_path / "p.yaml"
        policy.write_text(
            f"version: 1\nlistener: {{port: {port}}}\nengines:\n  e: {{kind: sim, models: [m]}}\n"
        )
        result = fairlane("serve", "--config", str(policy), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert f"listener.port 127.0.0.1:{port} is not available" in result.stderr


def test_serve_refuses_an_engine_key_that_is_not_in_its_environment(tmp_path: Path) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(
        "version: 1\nengines:\n  e: {kind: external, url: 'http://127.0.0.1:1', "
        "models: [m], api_key_env: FAIRLANE_TEST_UNSET_KEY}\n"
    )
    result = fairlane("serve", "--config", str(policy), "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert (
        "fairlane: engines.e.api_key_env: $FAIRLANE_TEST_UNSET_KEY is not set in the "
        "environment of fairlane serve"
    ) in result.stderr
