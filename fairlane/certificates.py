"""The HTTPS listener's certificate, and the CAs of its clients' certificates (mutual
TLS): checked before Envoy sees them, and followed on disk.

``fairlane serve`` looks at the files every half second (a ``stat`` each). When one
changes, however it was replaced (a copy in place, certbot's or Kubernetes' symlink
swap), the new contents are loaded and checked as Envoy would, then handed to Envoy as
its secret (``fairlane.envoy.tls``); contents that do not load, such as a certificate
copied before its key, are logged once and the ones in use stay.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fairlane.envoy.tls import render_client_ca, render_secret
from fairlane.policy import TlsConfig
from fairlane.rundir import RunDir

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


def client_ca_problems(tls: TlsConfig) -> list[str]:
    """Why Envoy could not check client certificates against ``client_ca_file``."""
    path = tls.client_ca_file
    if path is None:
        return []
    try:
        text = _absolute(path).read_text(errors="replace")
    except OSError as exc:
        return [f"listener.tls.client_ca_file {path}: cannot read: {exc.strerror or exc}"]
    if "-----BEGIN CERTIFICATE-----" not in text:
        return [f"listener.tls.client_ca_file {path}: no PEM certificate in it"]
    try:
        ssl.create_default_context(cafile=_absolute(path))
    except ssl.SSLError as exc:
        return [f"listener.tls.client_ca_file {path}: {exc.reason or exc}"]
    return []


def tls_problems(tls: TlsConfig) -> list[str]:
    """Everything in the tls section Envoy could not load."""
    return pair_problems(tls) + client_ca_problems(tls)


def listener_secrets(tls: TlsConfig, run_dir: RunDir) -> list[FollowedSecret]:
    """The secrets of the HTTPS listener: its certificate, and with mutual TLS the CAs
    of client certificates."""
    secrets = [
        FollowedSecret(
            (tls.cert_file, tls.key_file),
            lambda: pair_problems(tls),
            render_secret,
            run_dir.tls_secret,
            stale="certificate not (re)loaded, still serving the last good one",
            fresh=f"serving the certificate in {tls.cert_file}",
        )
    ]
    if tls.client_ca_file is not None:
        secrets.append(
            FollowedSecret(
                (tls.client_ca_file,),
                lambda: client_ca_problems(tls),
                render_client_ca,
                run_dir.client_ca_secret,
                stale="client CA not (re)loaded, still checking client certificates "
                "against the last good one",
                fresh=f"asking clients for certificates signed by a CA in {tls.client_ca_file}",
            )
        )
    return secrets


class FollowedSecret:
    """Keeps one of Envoy's secret files holding what is now on disk, once it loads."""

    def __init__(
        self,
        files: tuple[str, ...],
        problems: Callable[[], list[str]],
        render: Callable[..., dict[str, Any]],
        secret_file: Path,
        stale: str,
        fresh: str,
    ) -> None:
        self.secret_file = secret_file
        self._files = tuple(_absolute(name) for name in files)
        self._problems = problems
        self._render = render  # the files' texts → the SDS document
        self._stale, self._fresh = stale, fresh  # what the log says of bad / good news
        self._seen: Signature | None = None  # the files last looked at, good or bad

    def refresh(self, force: bool = False) -> bool:
        """Hand Envoy the files' contents if they changed since last time (or
        ``force``) and load; True when the secret was written."""
        signature = self._signature()
        if signature == self._seen and not force:
            return False
        self._seen = signature
        problems = self._problems()
        if problems:
            log.error("%s: %s", self._stale, "; ".join(problems))
            return False
        texts = [path.read_text() for path in self._files]
        if self._signature() != signature:
            self._seen = None  # changed while being read: the next look takes it
            return False
        _write_private(self.secret_file, self._render(*texts))
        log.info("%s", self._fresh)
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
