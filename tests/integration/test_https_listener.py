"""HTTPS on the API port (`listener.tls`): the unmodified OpenAI SDK over HTTP/2 and
TLS, plain HTTP told what to do, a renewed certificate served without a restart, and
serve refusing a pair that does not load."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from fairlane.ports import free_port

from testkit.certs import ThrowawayCA
from testkit.http import unverified_context

pytestmark = pytest.mark.integration

MODEL = "model-s"


def _policy(cert: Path, key: Path) -> dict[str, Any]:
    return {
        "version": 1,
        "listener": {"tls": {"cert_file": str(cert), "key_file": str(key)}},
        "tenants": {"alice": {}},
        "engines": {"sim": {"kind": "sim", "preset": "tiny", "models": [MODEL]}},
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[ThrowawayCA, Path]:
    directory = tmp_path_factory.mktemp("certs")
    ca = ThrowawayCA(directory)
    ca.issue(directory / "cert.pem", directory / "key.pem")
    return ca, directory


@pytest.fixture(scope="module")
def stack(stack_factory: Any, certs: tuple[ThrowawayCA, Path]) -> Any:
    _, directory = certs
    return stack_factory(_policy(directory / "cert.pem", directory / "key.pem"))


def _client(stack: Any, ca: ThrowawayCA) -> openai.OpenAI:
    trust = ssl.create_default_context(cafile=str(ca.ca_file))
    return openai.OpenAI(
        base_url=f"{stack.url}/v1",
        api_key="unused",
        default_headers={"X-Tenant-ID": "alice"},
        http_client=openai.DefaultHttpxClient(verify=trust, http2=True),
        max_retries=0,
    )


def test_the_openai_sdk_is_served_over_https_and_http2(
    stack: Any, certs: tuple[ThrowawayCA, Path]
) -> None:
    client = _client(stack, certs[0])
    messages = [{"role": "user", "content": "Hi"}]
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=messages, max_tokens=4
    )
    assert raw.http_response.http_version == "HTTP/2"
    assert raw.parse().usage.completion_tokens == 4
    chunks = client.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=4, stream=True
    )
    assert sum(bool(c.choices and c.choices[0].delta.content) for c in chunks) == 4
    with pytest.raises(openai.NotFoundError, match="The model `nope` does not exist"):
        client.chat.completions.create(model="nope", messages=messages)


def test_an_untrusted_client_gets_no_answer(stack: Any) -> None:
    """The certificate is checked by the client as usual: no CA, no connection."""
    client = openai.OpenAI(base_url=f"{stack.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


async def test_plain_http_is_told_to_use_https(stack: Any) -> None:
    url = stack.url.replace("https://", "http://") + "/v1/chat/completions"
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as resp:
        assert resp.status == 400
        error = (await resp.json())["error"]
    assert error["code"] == "https_required"
    assert error["message"] == (
        "This port serves HTTPS: send the request to https://, not http://."
    )


def _served_certificate(port: int) -> str:
    return ssl.get_server_certificate(("127.0.0.1", port))


def test_a_renewed_certificate_is_served_without_a_restart(
    stack: Any, certs: tuple[ThrowawayCA, Path], tmp_path: Path
) -> None:
    ca, directory = certs
    ca.issue(tmp_path / "cert.pem", tmp_path / "key.pem")
    before = _served_certificate(stack.port)
    # Copied in place, the certificate first: for a moment it is not the key's.
    shutil.copyfile(tmp_path / "cert.pem", directory / "cert.pem")
    time.sleep(1.5)  # serve looks every half second
    assert _served_certificate(stack.port) == before
    shutil.copyfile(tmp_path / "key.pem", directory / "key.pem")
    deadline = time.monotonic() + 10
    while _served_certificate(stack.port) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    served = ssl.PEM_cert_to_DER_cert(_served_certificate(stack.port))
    assert served == ssl.PEM_cert_to_DER_cert((tmp_path / "cert.pem").read_text())
    assert "still serving the last good one" in stack.logs()
    # Requests go on over the new certificate.
    client = _client(stack, ca)
    assert client.models.list().data[0].id == MODEL


def test_serve_refuses_a_key_that_is_not_the_certificates(
    stack_factory: Any, certs: tuple[ThrowawayCA, Path], tmp_path: Path
) -> None:
    ca, directory = certs
    ca.issue(tmp_path / "cert.pem", tmp_path / "key.pem")
    policy = _policy(tmp_path / "cert.pem", directory / "key.pem")
    policy["listener"]["port"] = free_port()
    other = stack_factory(policy, healthy=False)
    assert other.process.wait(timeout=30) == 1
    assert (
        f"fairlane: listener.tls.key_file {directory / 'key.pem'} is not the key of the "
        f"certificate in {tmp_path / 'cert.pem'}"
    ) in other.logs()


def test_a_handshake_left_unfinished_is_cut(stack: Any) -> None:
    """A ClientHello, then silence: the connection is closed after 10 s, not held."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    handshake = unverified_context().wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        handshake.do_handshake()
    with socket.create_connection(("127.0.0.1", stack.port), timeout=30) as conn:
        conn.sendall(outgoing.read())
        started = time.monotonic()
        while conn.recv(65536):  # the server's hello, then the close
            pass
        held = time.monotonic() - started
    assert 9 < held < 15
