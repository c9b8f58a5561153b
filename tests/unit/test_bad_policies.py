"""`fairlane check` on one broken policy per fixture: the exact `FILE:LINE key: message`.

envoyproxy/ratelimit style: every bad file names its line and key, so an operator can
fix a policy without reading Fairlane's code. The shipped configs must all pass.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BAD = Path("tests/fixtures/bad_policies")

# fixture file → the one line `fairlane check` prints on stderr (after "FILE:").
EXPECTED = {
    "unknown_key.yaml": "6 tenants.alice.wieght: unknown key",
    "weight_zero.yaml": "5 tenants.alice.weight: Input should be greater than 0",
    "bad_version.yaml": "2 version: only version 1 is supported (got 2)",
    "invalid_yaml.yaml": (
        "6: invalid YAML: while parsing a flow sequence, expected ',' or ']', "
        "but got '<stream end>'"
    ),
    "unknown_priority_class.yaml": (
        "6 tenants.alice.priority: unknown priority class 'realtime' "
        "(priority_classes: interactive, batch)"
    ),
    "model_served_by_no_engine.yaml": "5 tenants.alice.models: 'llama-70b' is served by no engine",
    "duplicate_model.yaml": (
        "9 engines.second.models: 'llama-8b' is also served by first; "
        "replicas of a model must serve the same models"
    ),
    "external_without_url.yaml": "4 engines.shared-vllm: an external engine needs `url`",
    "bad_api_key_hash.yaml": (
        "5 tenants.alice.api_keys: api_keys must be sha256 hex digests (see `fairlane hash-key`)"
    ),
    "client_certificates_without_client_ca.yaml": (
        "5 tenants.alice.client_certificates: needs listener.tls.client_ca_file: without it "
        "clients show no certificate"
    ),
    "certificate_of_two_tenants.yaml": (
        "9 tenants.bob.client_certificates: 'app.example.org' is also alice's"
    ),
    "api_key_of_two_tenants.yaml": "7 tenants.bob.api_keys: '4c806362b613...' is also alice's",
    "padded_certificate_name.yaml": (
        "5 tenants.alice.client_certificates: 'app.example.org ' is not a certificate name: "
        "a URI or DNS name, or a CN, up to 1024 printable characters with no space at "
        "either end"
    ),
    "missing_engines.yaml": "2 engines: required key is missing",
    "duplicate_key.yaml": "4: invalid YAML: key 'alice' appears twice",
    "queue_outlives_idle_timeout.yaml": (
        "9 engines.e.queue.timeout_s: must be below listener.stream_idle_timeout_s (10)"
    ),
    "port_clash.yaml": "5 listener.admin_port: 8000 is also listener.port",
    "cors_origin_with_a_path.yaml": (
        "4 listener.cors_allow_origins: 'https://app.example.com/chat' is not an origin: "
        "scheme://host[:port] with no path, or *"
    ),
    "api_key_env_on_a_managed_engine.yaml": (
        "4 engines.local-vllm: api_key_env is for external engines (Fairlane starts the others)"
    ),
    "nice_on_an_external_engine.yaml": (
        "4 engines.shared-vllm: nice is for engines Fairlane starts "
        "(run an external one under nice)"
    ),
    "adapters_on_an_external_engine.yaml": (
        "5 engines.shared-vllm: adapters are for engines Fairlane starts: list an external "
        "engine's LoRA adapters in `models`, as it serves them"
    ),
    "adapter_named_like_a_model.yaml": (
        "4 engines.local-vllm: llama-8b: a name in both models and adapters"
    ),
    "announce_to_an_external_engine_by_name.yaml": (
        "4 engines.shared-vllm: announce: the url's host 'vllm.internal' must be an IP "
        "address (no name lookups on the request path)"
    ),
    "announce_without_priorities.yaml": (
        "4 engines.shared-vllm: announce needs inject_priority: it announces priorities"
    ),
    "heavy_prefill_tokens_without_isolated_prefills.yaml": (
        "4 engines.shared-vllm: heavy_prefill_tokens needs isolated prefills (vllm or sim, "
        "inject_priority, isolate_prefills not false)"
    ),
    "announce_without_isolated_prefills.yaml": (
        "4 engines.local-vllm: announce: true needs isolated prefills (vllm or sim, "
        "inject_priority, isolate_prefills not false)"
    ),
}


def check(*files: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.cli", "check", *map(str, files)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_fixture_has_an_expectation() -> None:
    assert sorted(p.name for p in (ROOT / BAD).glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bad_policy_message(name: str) -> None:
    path = BAD / name
    result = check(path)
    assert result.returncode == 1, result
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{path}:{EXPECTED[name]}"]


def test_every_bad_file_is_reported_and_good_ones_still_pass() -> None:
    good = ROOT / "configs" / "quickstart.yaml"
    result = check(BAD / "weight_zero.yaml", good, BAD / "unknown_key.yaml")
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 2
    assert result.stdout.startswith(f"{good}: ok")


def test_shipped_configs_pass() -> None:
    configs = sorted((ROOT / "configs").glob("*.yaml"))
    assert {"quickstart.yaml", "docker.yaml", "docker-gpu.yaml"} <= {p.name for p in configs}
    result = check(*configs)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == len(configs)
    for path, line in zip(configs, lines, strict=True):
        assert line.startswith(f"{path}: ok — "), line
