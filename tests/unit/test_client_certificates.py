"""Tenants named by a client certificate (mutual TLS): the names read from Envoy's
x-forwarded-client-cert, and where they stand among the other ways to name a tenant."""

from __future__ import annotations

from typing import Any

import pytest

from fairlane.extproc.client_certificate import certificate_names, common_name
from fairlane.extproc.errors import Reason, Rejection
from fairlane.extproc.pipeline import identify
from fairlane.extproc.request import request_info
from fairlane.extproc.runtime import Runtime, compile_policy
from fairlane.policy import hash_key
from fairlane.policy_file import parse_policy

ALICE = "spiffe://example.org/ns/a/sa/app"

POLICY = f"""
version: 1
listener:
  tls: {{cert_file: s.pem, key_file: k.pem, client_ca_file: ca.pem}}
tenants:
  alice: {{client_certificates: ["{ALICE}"]}}
  bob: {{client_certificates: [bob.example.org]}}
  carol: {{client_certificates: ["Carol, Jr."]}}
engines:
  e1: {{kind: sim, models: [m1]}}
"""


def runtime(bob_key: bool = False, trust_tenant_header: bool = True) -> Runtime:
    text = POLICY + f"trust_tenant_header: {str(trust_tenant_header).lower()}\n"
    if bob_key:
        key = f"[bob.example.org], api_keys: [{hash_key('sk-bob')}]"
        text = text.replace("[bob.example.org]", key)
    return compile_policy(parse_policy(text), 1)


def xfcc(*pairs: str) -> str:
    return ";".join(("Hash=5d2f", *pairs))


@pytest.mark.parametrize(
    ("header", "names"),
    [
        (None, ()),
        ("", ()),
        (xfcc('Subject="CN=app,O=Example"', f"URI={ALICE}"), (ALICE, "app")),
        (xfcc('Subject=""', "DNS=a.test", "DNS=b.test"), ("a.test", "b.test")),
        # RFC 2253 escapes in the subject: a comma, a quote, a byte in hex.
        (xfcc(r'Subject="O=Example,CN=Carol\, Jr."'), ("Carol, Jr.",)),
        (xfcc(r'Subject="CN=say \"hi\""'), ('say "hi"',)),
        (xfcc(r'Subject="CN=caf\C3\A9"'), ("café",)),
        (xfcc('Subject="OU=x+CN=multi"'), ("multi",)),
        # Were there several certificates, the last is the one Envoy added.
        (f"URI=spiffe://proxy,{xfcc(f'URI={ALICE}')}", (ALICE,)),
        # The same name twice counts once; a subject without CN gives none.
        (xfcc('Subject="O=Example"', "DNS=a", "DNS=a"), ("a",)),
    ],
)  # fmt: skip
def test_names_are_read_from_envoys_header(header: str | None, names: tuple[str, ...]) -> None:
    assert certificate_names(header) == names


def test_a_subject_without_a_common_name_has_none() -> None:
    assert common_name("O=Example,C=FR") is None


def info(names: str | None, tenant: str | None = None, **headers: str) -> Any:
    all_headers = {**headers, "content-length": "10"}
    if names is not None:
        all_headers["x-forwarded-client-cert"] = names
    if tenant is not None:
        all_headers["x-tenant-id"] = tenant
    return request_info(all_headers, {"model": "m1"})


def test_a_listed_certificate_comes_before_the_api_key_and_the_header() -> None:
    rt = runtime(bob_key=True)
    assert identify(info(xfcc(f"URI={ALICE}"), "carol"), rt) == "alice"
    assert identify(info(xfcc("DNS=bob.example.org")), rt) == "bob"  # no key needed
    key = {"authorization": "Bearer sk-bob"}
    assert identify(info(xfcc(f"URI={ALICE}"), **key), rt) == "alice"
    assert identify(info(xfcc(r'Subject="CN=Carol\, Jr."')), rt) == "carol"
    # Unlisted: as without a certificate (here keys are on, so the key).
    assert identify(info(xfcc("DNS=dave.example.org"), **key), rt) == "bob"
    rejection = identify(info(xfcc("DNS=dave.example.org")), rt)
    assert isinstance(rejection, Rejection) and rejection.reason is Reason.INVALID_API_KEY


def test_an_unlisted_certificate_is_told_so() -> None:
    rejection = identify(info(xfcc("DNS=dave.example.org", 'Subject="CN=dave"')), runtime())
    assert isinstance(rejection, Rejection) and rejection.reason is Reason.MISSING_TENANT
    assert rejection.message == (
        "missing X-Tenant-ID header, and no tenant lists this client certificate "
        "(dave.example.org, dave) in its client_certificates"
    )
    assert identify(info(xfcc("DNS=dave.example.org"), "dave"), runtime()) == "dave"
    untrusted = runtime(trust_tenant_header=False)
    rejection = identify(info(xfcc("DNS=dave.example.org"), "dave"), untrusted)
    assert isinstance(rejection, Rejection) and rejection.reason is Reason.UNKNOWN_TENANT
    assert rejection.message == (
        "no tenant lists this client certificate (dave.example.org) in its client_certificates"
    )


def test_a_certificate_two_tenants_list_names_neither() -> None:
    header = xfcc(f"URI={ALICE}", "DNS=bob.example.org", "DNS=c", "DNS=d")
    rejection = identify(info(header, "alice"), runtime())
    assert isinstance(rejection, Rejection)
    assert (rejection.reason.status, rejection.reason.code) == (403, "ambiguous_client_certificate")
    assert rejection.message == (
        f"the client certificate ({ALICE}, bob.example.org, c, ...) is listed by tenants "
        "alice, bob: it may name only one"
    )


def test_without_listed_certificates_the_header_means_nothing() -> None:
    """Envoy removes a client's x-forwarded-client-cert unless mutual TLS is on, and a
    policy lists certificates only with it: were one to arrive, no tenant maps it."""
    plain = compile_policy(
        parse_policy("version: 1\nengines:\n  e1: {kind: sim, models: [m1]}\n"), 1
    )
    assert identify(info(xfcc(f"URI={ALICE}"), "carol"), plain) == "carol"
