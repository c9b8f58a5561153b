"""The names in the certificate a client showed (mutual TLS), as Envoy reports them.

With ``listener.tls.client_ca_file`` Envoy sets ``x-forwarded-client-cert`` (XFCC) to
the certificate it checked, replacing whatever the client sent: ``Hash=...;
Subject="CN=alice,O=Example";URI=spiffe://example.org/alice;DNS=alice.example.org``.
A tenant's ``client_certificates`` are matched against the URI and DNS names and the
subject's common name (CN).
"""

from __future__ import annotations

import re

XFCC_HEADER = "x-forwarded-client-cert"
_NAME_KEYS = ("uri", "dns")
_HEX_PAIR = re.compile(r"[0-9A-Fa-f]{2}")


def certificate_names(xfcc: str | None) -> tuple[str, ...]:
    """URI names, DNS names, then the subject's CN; () without a certificate. Envoy
    sets one element (``SANITIZE_SET``); were there more, the last is its own."""
    if not xfcc:
        return ()
    pairs = _pairs(_split(_split(xfcc, ",")[-1], ";"))
    names = [value for key in _NAME_KEYS for name, value in pairs if name == key and value]
    names += [cn for name, value in pairs if name == "subject" and (cn := common_name(value))]
    return tuple(dict.fromkeys(names))


def _pairs(fields: list[str]) -> list[tuple[str, str]]:
    """``Key=value`` fields as (lower-case key, value unquoted)."""
    pairs = []
    for field in fields:
        key, sep, value = field.partition("=")
        if sep:
            pairs.append((key.strip().lower(), _unquote(value.strip())))
    return pairs


def common_name(subject: str) -> str | None:
    """The CN of an RFC 2253 subject (``CN=alice,O=Example\\, Inc.``), unescaped."""
    for rdn in _split(subject, ",+", quotes=False):
        key, sep, value = rdn.partition("=")
        if sep and key.strip().upper() == "CN":
            return _unescape_dn(value.strip())
    return None


def _split(text: str, separators: str, quotes: bool = True) -> list[str]:
    """``text`` cut at ``separators`` outside double quotes and not escaped by \\."""
    parts, current, quoted, escaped = [], [], False, False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char == '"' and quotes:
            current.append(char)
            quoted = not quoted
        elif char in separators and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unquote(value: str) -> str:
    """Envoy quotes a value as is (a subject's own escapes stay for common_name)."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _unescape_dn(value: str) -> str:
    """RFC 2253 escapes: ``\\,`` for a special character, ``\\2C`` for a byte."""
    out = bytearray()
    i = 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1 : i + 3]
            if _HEX_PAIR.fullmatch(pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out += value[i + 1].encode()
            i += 2
            continue
        out += char.encode()
        i += 1
    return out.decode(errors="replace")
