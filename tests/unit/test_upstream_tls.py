"""An external engine at an https:// url: the policy's rules, the CA bundle its
certificate is checked against, and the engine's cluster (validated by Envoy)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from fairlane.engine_config import EngineConfig
from fairlane.engines.run import launch_key
from fairlane.engines.spec import engine_spec
from fairlane.engines.upstream_tls import bundle_problems, ca_bundle, client_ssl
from fairlane.envoy.bootstrap import render_cds

from testkit.certs import ThrowawayCA
from testkit.envoy_config import validate_rendered


def external(url: str, **fields: object) -> EngineConfig:
    return EngineConfig.model_validate({"kind": "external", "url": url, "models": ["m"], **fields})


def test_an_https_url_is_an_engine_reached_over_tls() -> None:
    config = external("https://gpu-box:8443", ca_file="ca.pem")
    assert config.https
    assert engine_spec("e", config).base_url == "https://gpu-box:8443"
    assert engine_spec("e", external("https://gpu-box")).port == 443
    assert not external("http://gpu-box:8000").https


def test_a_new_ca_file_reconnects_the_engine() -> None:
    """Probed and published to Envoy again at once, not at its next change of state."""
    config = external("https://h:1", ca_file="a.pem")
    assert launch_key(config) != launch_key(config.model_copy(update={"ca_file": "b.pem"}))


@pytest.mark.parametrize(
    ("url", "fields", "message"),
    [
        ("ftp://h:1", {}, "url must look like http://host:port or https://host:port (no path)"),
        ("https://h:1/v1", {}, "url must look like http://host:port or https://host:port"),
        ("http://h:1", {"ca_file": "ca.pem"}, "ca_file is for an external engine at an https"),
    ],
)
def test_the_policy_names_what_is_wrong(url: str, fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        external(url, **fields)


def test_the_bundle_is_the_engines_own_else_the_systems(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = ThrowawayCA(tmp_path)
    assert ca_bundle(external("https://h:1", ca_file=str(ca.ca_file))) == ca.ca_file
    monkeypatch.setenv("SSL_CERT_FILE", str(ca.ca_file))  # as OpenSSL reads it
    assert ca_bundle(external("https://h:1")) == ca.ca_file
    assert client_ssl(external("http://h:1")) is True
    assert client_ssl(external("https://h:1", ca_file=str(ca.ca_file))) is not True


def test_a_bundle_that_does_not_load_is_named(tmp_path: Path) -> None:
    missing = external("https://h:1", ca_file=str(tmp_path / "nope.pem"))
    assert bundle_problems("gpu", missing) == [
        f"engines.gpu.ca_file {tmp_path / 'nope.pem'}: cannot load it: No such file or directory"
    ]
    (tmp_path / "junk.pem").write_text("not a certificate\n")
    [problem] = bundle_problems("gpu", external("https://h:1", ca_file=str(tmp_path / "junk.pem")))
    assert problem.startswith(f"engines.gpu.ca_file {tmp_path / 'junk.pem'}: cannot load it")
    assert bundle_problems("gpu", external("http://h:1")) == []


def test_the_cluster_checks_the_certificate_for_the_urls_host(tmp_path: Path) -> None:
    ca = ThrowawayCA(tmp_path)
    doc = render_cds(
        {"named": ("gpu-box", 8443), "ip": ("10.0.0.7", 8443), "plain": ("10.0.0.8", 8000)},
        1,
        {"named": ("gpu-box", ca.ca_file), "ip": ("10.0.0.7", ca.ca_file)},
    )
    clusters = {c["name"]: c for c in doc["resources"]}
    assert "transport_socket" not in clusters["engine_plain"]
    named = clusters["engine_named"]["transport_socket"]["typed_config"]
    assert named["sni"] == "gpu-box"
    validation = named["common_tls_context"]["validation_context"]
    assert validation["trusted_ca"] == {"filename": str(ca.ca_file)}
    assert validation["match_typed_subject_alt_names"] == [
        {"san_type": "DNS", "matcher": {"exact": "gpu-box"}}
    ]
    by_ip = clusters["engine_ip"]["transport_socket"]["typed_config"]
    assert "sni" not in by_ip  # SNI carries names only
    assert by_ip["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"] == [
        {"san_type": "IP_ADDRESS", "matcher": {"exact": "10.0.0.7"}}
    ]
    result = validate_rendered(tmp_path, doc)
    assert result.returncode == 0, result.stdout + result.stderr
