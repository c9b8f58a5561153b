"""The HTTPS listener's certificate and its clients' CAs: the checks that name a bad
file, the secrets handed to Envoy as the files change, and the listener Envoy is given
(validated by Envoy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fairlane.certificates import client_ca_problems, listener_secrets, pair_problems
from fairlane.envoy.bootstrap import render_bootstrap, render_cds
from fairlane.envoy.tls import CLIENT_CA_SECRET_NAME, SECRET_NAME
from fairlane.policy import Policy, TlsConfig
from fairlane.rundir import RunDir

from testkit.certs import ThrowawayCA
from testkit.envoy_config import validate_rendered


@pytest.fixture
def ca(tmp_path: Path) -> ThrowawayCA:
    return ThrowawayCA(tmp_path)


@pytest.fixture
def tls(tmp_path: Path, ca: ThrowawayCA) -> TlsConfig:
    ca.issue(tmp_path / "cert.pem", tmp_path / "key.pem")
    return TlsConfig(cert_file=str(tmp_path / "cert.pem"), key_file=str(tmp_path / "key.pem"))


def test_a_certificate_with_its_key_loads(tls: TlsConfig) -> None:
    assert pair_problems(tls) == []


def test_a_missing_file_is_named(tls: TlsConfig, tmp_path: Path) -> None:
    missing = tls.model_copy(update={"key_file": str(tmp_path / "nope.pem")})
    assert pair_problems(missing) == [
        f"listener.tls.key_file {tmp_path / 'nope.pem'}: cannot read: No such file or directory"
    ]


def test_files_that_are_not_pem_are_named(tls: TlsConfig, tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a certificate\n")
    assert pair_problems(tls.model_copy(update={"cert_file": str(tmp_path / "junk")})) == [
        f"listener.tls.cert_file {tmp_path / 'junk'}: no PEM certificate in it"
    ]
    swapped = tls.model_copy(update={"key_file": tls.cert_file})
    assert pair_problems(swapped) == [
        f"listener.tls.key_file {tls.cert_file}: no PEM private key in it"
    ]


def test_a_key_of_another_certificate_is_refused(
    tls: TlsConfig, ca: ThrowawayCA, tmp_path: Path
) -> None:
    ca.issue(tmp_path / "other-cert.pem", tmp_path / "other-key.pem")
    mixed = tls.model_copy(update={"key_file": str(tmp_path / "other-key.pem")})
    assert pair_problems(mixed) == [
        f"listener.tls.key_file {tmp_path / 'other-key.pem'} is not the key of the "
        f"certificate in {tls.cert_file}"
    ]


def test_an_encrypted_key_is_refused_without_asking_for_a_passphrase(
    tls: TlsConfig, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "locked.pem").write_bytes(encrypted)
    [problem] = pair_problems(tls.model_copy(update={"key_file": str(tmp_path / "locked.pem")}))
    assert "the key is encrypted; Envoy needs it without a passphrase" in problem


def _secret(path: Path) -> dict[str, str]:
    [resource] = json.loads(path.read_text())["resources"]
    assert resource["name"] == SECRET_NAME
    pair = resource["tls_certificate"]
    return {
        "cert": pair["certificate_chain"]["inline_string"],
        "key": pair["private_key"]["inline_string"],
    }


def test_the_secret_follows_the_files_and_only_a_good_pair(
    tls: TlsConfig, ca: ThrowawayCA, tmp_path: Path
) -> None:
    run_dir = RunDir(tmp_path / "run")
    [certificate] = listener_secrets(tls, run_dir)
    secret = run_dir.tls_secret
    assert certificate.refresh()
    assert _secret(secret) == {
        "cert": Path(tls.cert_file).read_text(),
        "key": Path(tls.key_file).read_text(),
    }
    # It holds the private key: this user's alone.
    assert secret.stat().st_mode & 0o777 == 0o600
    assert secret.parent.stat().st_mode & 0o777 == 0o700
    assert not certificate.refresh()  # nothing changed
    served = secret.read_text()

    # A renewal copied in place, the certificate first: until the key follows, the
    # pair does not load and the one served stays.
    ca.issue(tmp_path / "new-cert.pem", tmp_path / "new-key.pem")
    shutil.copyfile(tmp_path / "new-cert.pem", tls.cert_file)
    assert not certificate.refresh()
    assert secret.read_text() == served
    shutil.copyfile(tmp_path / "new-key.pem", tls.key_file)
    assert certificate.refresh()
    assert _secret(secret)["cert"] == (tmp_path / "new-cert.pem").read_text()

    # `fairlane reload` asks again even when nothing seems to have changed.
    assert not certificate.refresh()
    assert certificate.refresh(force=True)


def test_a_clients_ca_that_does_not_load_is_named(tls: TlsConfig, tmp_path: Path) -> None:
    def problems(path: Path) -> list[str]:
        return client_ca_problems(tls.model_copy(update={"client_ca_file": str(path)}))

    assert client_ca_problems(tls) == []  # no mutual TLS: nothing to load
    assert problems(tmp_path / "ca.pem") == []
    assert problems(tmp_path / "nope.pem") == [
        f"listener.tls.client_ca_file {tmp_path / 'nope.pem'}: cannot read: "
        "No such file or directory"
    ]
    assert problems(Path(tls.key_file)) == [
        f"listener.tls.client_ca_file {tls.key_file}: no PEM certificate in it"
    ]
    broken = tmp_path / "broken.pem"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    [problem] = problems(broken)
    assert problem.startswith(f"listener.tls.client_ca_file {broken}: ")


def test_the_clients_ca_secret_follows_its_file(tls: TlsConfig, tmp_path: Path) -> None:
    ca_file = tmp_path / "clients.pem"
    shutil.copyfile(tmp_path / "ca.pem", ca_file)
    mutual = tls.model_copy(update={"client_ca_file": str(ca_file)})
    run_dir = RunDir(tmp_path / "run")
    pair, clients = listener_secrets(mutual, run_dir)
    assert pair.secret_file == run_dir.tls_secret
    assert clients.refresh()

    def trusted() -> str:
        [resource] = json.loads(run_dir.client_ca_secret.read_text())["resources"]
        assert resource["name"] == CLIENT_CA_SECRET_NAME
        return str(resource["validation_context"]["trusted_ca"]["inline_string"])

    assert trusted() == ca_file.read_text()
    assert run_dir.client_ca_secret.stat().st_mode & 0o777 == 0o600
    ca_file.write_text("not a certificate\n")
    assert not clients.refresh()  # the CA in use stays
    assert trusted() == (tmp_path / "ca.pem").read_text()
    renewed = ThrowawayCA(tmp_path / "renewed")
    shutil.copyfile(renewed.ca_file, ca_file)
    assert clients.refresh()
    assert trusted() == renewed.ca_file.read_text()


@pytest.mark.parametrize("mutual", [False, True])
def test_envoy_accepts_the_https_listener(tls: TlsConfig, tmp_path: Path, mutual: bool) -> None:
    run_dir = RunDir(tmp_path / "run")
    if mutual:
        tls = tls.model_copy(update={"client_ca_file": str(tmp_path / "ca.pem")})
    policy = Policy.model_validate(
        {
            "version": 1,
            "listener": {"tls": tls.model_dump()},
            "engines": {"sim": {"kind": "sim", "preset": "tiny", "models": ["m"]}},
        }
    )
    listener = render_bootstrap(policy, run_dir)["static_resources"]["listeners"][0]
    tls_chain, plaintext_chain = listener["filter_chains"]
    assert tls_chain["filter_chain_match"] == {"transport_protocol": "tls"}
    assert "transport_socket" in tls_chain and "transport_socket" not in plaintext_chain
    context = tls_chain["transport_socket"]["typed_config"]
    assert context.get("require_client_certificate", False) is mutual
    manager = tls_chain["filters"][0]["typed_config"]
    # With mutual TLS Envoy sets the header ext_proc reads; else its default removes it.
    assert manager.get("forward_client_cert_details", "SANITIZE") == (
        "SANITIZE_SET" if mutual else "SANITIZE"
    )
    assert all(secret.refresh() for secret in listener_secrets(tls, run_dir))  # Envoy reads
    result = validate_rendered(tmp_path, render_cds({"sim": ("127.0.0.1", 1)}, 1), policy)
    assert result.returncode == 0, result.stdout + result.stderr
