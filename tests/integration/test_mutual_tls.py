"""Mutual TLS on the API port (`listener.tls.client_ca_file`): a client without a
certificate from the clients' CA gets no connection, a certificate a tenant lists names
that tenant whatever the request says, and a renewed CA is used without a restart."""

from __future__ import annotations

import ipaddress
import shutil
import ssl
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from cryptography import x509

from fairlane.ports import free_port

from testkit.certs import ThrowawayCA

pytestmark = pytest.mark.integration

MODEL = "model-s"
ALICE = "spiffe://fairlane.test/ns/team-a/sa/app"  # a URI name, as SPIFFE issues
BOB = "bob.clients.test"  # a DNS name
CAROL = "Carol, Jr."  # a CN only (RFC 2253 escapes its comma)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("pki")
    server_ca = ThrowawayCA(directory / "server")
    server_ca.issue(directory / "server.pem", directory / "server-key.pem")
    clients_ca = ThrowawayCA(directory / "clients")
    shutil.copyfile(clients_ca.ca_file, directory / "clients-ca.pem")
    stranger_ca = ThrowawayCA(directory / "stranger")
    issued = {
        "alice": (clients_ca, "app", (x509.UniformResourceIdentifier(ALICE),)),
        "bob": (clients_ca, "bob", (x509.DNSName(BOB),)),
        "carol": (clients_ca, CAROL, ()),
        "dave": (clients_ca, "dave", (x509.DNSName("dave.clients.test"),)),
        "both": (clients_ca, "x", (x509.UniformResourceIdentifier(ALICE), x509.DNSName(BOB))),
        "stranger": (stranger_ca, "app", (x509.UniformResourceIdentifier(ALICE),)),
    }
    for name, (ca, common_name, names) in issued.items():
        ca.issue(directory / f"{name}.pem", directory / f"{name}-key.pem", common_name, names)
    return {"dir": directory, "server_ca": server_ca}


def _policy(directory: Path) -> dict[str, Any]:
    tls = {
        "cert_file": str(directory / "server.pem"),
        "key_file": str(directory / "server-key.pem"),
        "client_ca_file": str(directory / "clients-ca.pem"),
    }
    return {
        "version": 1,
        "listener": {"tls": tls},
        "tenants": {
            "alice": {"client_certificates": [ALICE]},
            "bob": {"client_certificates": [BOB]},
            "carol": {"client_certificates": [CAROL]},
        },
        "engines": {"sim": {"kind": "sim", "preset": "tiny", "models": [MODEL]}},
    }


def _context(pki: dict[str, Any], who: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["server_ca"].ca_file))
    if who is not None:
        directory = pki["dir"]
        context.load_cert_chain(directory / f"{who}.pem", directory / f"{who}-key.pem")
    return context


@pytest.fixture(scope="module")
def stack(stack_factory: Any, pki: dict[str, Any]) -> Any:
    started = stack_factory(_policy(pki["dir"]), healthy=False)
    started.wait_healthy(context=_context(pki, "alice"))
    return started


def _client(stack: Any, pki: dict[str, Any], who: str | None, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{stack.url}/v1",
        api_key="unused",
        default_headers=headers,
        http_client=openai.DefaultHttpxClient(verify=_context(pki, who), http2=True),
        max_retries=0,
    )


def _chat(client: openai.OpenAI) -> Any:
    messages = [{"role": "user", "content": "Hi"}]
    return client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=2
    )


def _tenant_of(stack: Any, request_id: str) -> str:
    [entry] = stack.access_log(lambda e: e.get("request_id") == request_id, 1)
    return str(entry["tenant"])


def test_a_client_without_a_certificate_from_the_clients_ca_gets_no_connection(
    stack: Any, pki: dict[str, Any]
) -> None:
    for who in (None, "stranger"):
        with pytest.raises(openai.APIConnectionError):
            _client(stack, pki, who).models.list()


def test_a_listed_certificate_names_its_tenant_whatever_the_request_says(
    stack: Any, pki: dict[str, Any]
) -> None:
    # A header, and an x-forwarded-client-cert of the client's own: neither counts.
    forged = {"X-Tenant-ID": "carol", "X-Forwarded-Client-Cert": f"URI={ALICE}"}
    for who, tenant in (("alice", "alice"), ("bob", "bob"), ("carol", "carol")):
        raw = _chat(_client(stack, pki, who, **forged))
        assert raw.parse().usage.completion_tokens == 2
        assert _tenant_of(stack, raw.headers["x-request-id"]) == tenant


def test_an_unlisted_certificate_falls_back_to_the_header(stack: Any, pki: dict[str, Any]) -> None:
    """dave's certificate is signed by the clients' CA but no tenant lists it: it may
    connect, and the request names its tenant as without mutual TLS; a forged
    x-forwarded-client-cert does not make it alice."""
    forged = {"X-Tenant-ID": "bob", "X-Forwarded-Client-Cert": f"URI={ALICE}"}
    raw = _chat(_client(stack, pki, "dave", **forged))
    assert _tenant_of(stack, raw.headers["x-request-id"]) == "bob"
    with pytest.raises(openai.BadRequestError, match="missing X-Tenant-ID header"):
        _chat(_client(stack, pki, "dave"))


def test_a_certificate_two_tenants_list_is_refused(stack: Any, pki: dict[str, Any]) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _chat(_client(stack, pki, "both"))
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["code"] == "ambiguous_client_certificate"
    assert error["message"] == (
        f"the client certificate ({ALICE}, {BOB}, x) is listed by tenants alice, bob: "
        "it may name only one"
    )


def test_serve_reported_its_engines_healthy(stack: Any) -> None:
    """It cannot reach its own API without a client certificate: it asks the worker."""
    deadline = time.monotonic() + 10
    while "All engines healthy" not in stack.logs() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "All engines healthy" in stack.logs()


def test_serve_refuses_a_clients_ca_that_does_not_load(
    stack_factory: Any, pki: dict[str, Any]
) -> None:
    directory = pki["dir"]
    policy = _policy(directory)
    policy["listener"]["tls"]["client_ca_file"] = str(directory / "server-key.pem")
    policy["listener"]["port"] = free_port()
    other = stack_factory(policy, healthy=False)
    assert other.process.wait(timeout=30) == 1
    assert (
        f"fairlane: listener.tls.client_ca_file {directory / 'server-key.pem'}: "
        "no PEM certificate in it"
    ) in other.logs()


def test_a_renewed_clients_ca_is_used_without_a_restart(
    stack: Any, pki: dict[str, Any], tmp_path: Path
) -> None:
    directory = pki["dir"]
    renewed = ThrowawayCA(tmp_path)
    renewed.issue(
        directory / "erin.pem",
        directory / "erin-key.pem",
        "erin",
        (x509.IPAddress(ipaddress.ip_address("10.0.0.5")),),
    )
    (directory / "clients-ca.pem").write_text("not a certificate\n")  # a bad copy first
    time.sleep(1.5)  # serve looks every half second
    assert _chat(_client(stack, pki, "alice", **{"X-Tenant-ID": "x"})).status_code == 200
    shutil.copyfile(renewed.ca_file, directory / "clients-ca.pem")
    deadline = time.monotonic() + 10
    while True:
        try:
            raw = _chat(_client(stack, pki, "erin", **{"X-Tenant-ID": "carol"}))
            break
        except openai.APIConnectionError:
            assert time.monotonic() < deadline, "the renewed CA was not used"
            time.sleep(0.2)
    assert raw.status_code == 200
    with pytest.raises(openai.APIConnectionError):  # the old CA's clients, no longer
        _client(stack, pki, "alice").models.list()
    assert "client CA not (re)loaded" in stack.logs()
