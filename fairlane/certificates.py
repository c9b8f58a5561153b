"""The HTTPS listener's certificate: checked before Envoy sees it, and followed on disk.

``fairlane serve`` looks at the two files every half second (a ``stat`` each). When
either changes, however it was replaced (a copy in place, certbot's or Kubernetes'
symlink swap), the new pair is loaded and checked as Envoy would, then handed to Envoy
as its secret (``fairlane.envoy.tls``); a pair that does not load, such as a certificate
copied before its key, is logged once and the one being served stays.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from pathlib import Path

from fairlane.envoy.tls import render_secret
from fairlane.policy import TlsConfig

log = logging.getLogger("fairlane.certificates")

Signature = tuple[tuple[int, int, int], ...]  # (inode, size, mtime) of each file


def pair_problems(tls: TlsConfig) -> list[str]:
    """Why Envoy could not serve this pair, in words; empty when it can. Python's ssl
    loads it much as Envoy will: the PEM blocks, then whether the key is the
    certificate's."""
    texts: dict[str, str] = {}
    for field, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
        try:
            texts[field] = _absolute(path).read_text(errors="replace")
        except OSError as exc:
            return [f"listener.tls.{field} {path}: cannot read: {exc.strerror or exc}"]
    if "-----BEGIN CERTIFICATE-----" not in texts["cert_file"]:
        return [f"listener.tls.cert_file {tls.cert_file}: no PEM certificate in it"]
    key = texts["key_file"]
    if "ENCRYPTED" in key:
        return [
            f"listener.tls.key_file {tls.key_file}: the key is encrypted; Envoy needs it "
            "without a passphrase (openssl pkey -in KEY -out PLAIN_KEY)"
        ]
    if "PRIVATE KEY-----" not in key:
        return [f"listener.tls.key_file {tls.key_file}: no PEM private key in it"]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(_absolute(tls.cert_file), _absolute(tls.key_file))
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return [
                f"listener.tls.key_file {tls.key_file} is not the key of the certificate "
                f"in {tls.cert_file}"
            ]
        return [f"listener.tls: {tls.cert_file} and {tls.key_file}: {exc.reason or exc}"]
    return []


class ListenerCertificate:
    """Keeps Envoy's secret file holding the pair now on disk, once it loads."""

    def __init__(self, tls: TlsConfig, secret_file: Path) -> None:
        self.tls = tls
        self.secret_file = secret_file
        self._files = (_absolute(tls.cert_file), _absolute(tls.key_file))
        self._seen: Signature | None = None  # the files last looked at, good or bad

    def refresh(self, force: bool = False) -> bool:
        """Hand Envoy the pair if the files changed since last time (or ``force``) and
        it loads; True when the secret was written."""
        signature = self._signature()
        if signature == self._seen and not force:
            return False
        self._seen = signature
        problems = pair_problems(self.tls)
        if problems:
            log.error(
                "certificate not (re)loaded, still serving the last good one: %s",
                "; ".join(problems),
            )
            return False
        cert, key = (path.read_text() for path in self._files)
        if self._signature() != signature:
            self._seen = None  # changed while being read: the next look takes it
            return False
        _write_private(self.secret_file, render_secret(cert, key))
        log.info("serving the certificate in %s", self.tls.cert_file)
        return True

    def _signature(self) -> Signature:
        found = []
        for path in self._files:
            try:
                st = path.stat()  # through symlinks: a swapped link is a new file
            except OSError:
                found.append((0, 0, 0))
            else:
                found.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(found)


def _write_private(path: Path, document: dict[str, object]) -> None:
    """Atomically, readable by this user only: the file holds the private key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # a leftover keeps its mode through O_TRUNC
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(document, out)
    tmp.replace(path)


def _absolute(path: str) -> Path:
    """Relative to where ``fairlane serve`` runs (Envoy never reads these paths)."""
    return Path(path).expanduser().resolve()
