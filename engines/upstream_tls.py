"""An external engine at an https:// url: the CA bundle its certificate is checked
against, by Envoy (the engine's cluster) and by Fairlane's own requests (the health
probe, the adaptive limit's /metrics), so that both trust the same certificates."""

from __future__ import annotations

import functools
import os
import ssl
from pathlib import Path

from fairlane.engine_config import EngineConfig


def ca_bundle(config: EngineConfig) -> Path | None:
    """The engine's ``ca_file``, else the system's bundle (``SSL_CERT_FILE`` first, as
    OpenSSL reads it); None when there is none. Envoy needs a file: it has no store."""
    if config.ca_file is not None:
        return Path(config.ca_file).expanduser().resolve()
    paths = ssl.get_default_verify_paths()
    for candidate in (os.environ.get(paths.openssl_cafile_env), paths.cafile, paths.openssl_cafile):
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def client_ssl(config: EngineConfig) -> ssl.SSLContext | bool:
    """aiohttp's ``ssl=`` for a request to this engine (True, its default, for http)."""
    if not config.https:
        return True
    bundle = ca_bundle(config)
    return _context(None if bundle is None else str(bundle))


def bundle_problems(name: str, config: EngineConfig) -> list[str]:
    """Why this engine's certificate could not be checked, in words; empty when it can."""
    if not config.https:
        return []
    bundle = ca_bundle(config)
    if bundle is None:
        return [f"engines.{name}: no CA bundle found on this system for its https url: set ca_file"]
    try:
        _context(str(bundle))
    except (OSError, ssl.SSLError) as exc:
        reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
        return [f"engines.{name}.ca_file {bundle}: cannot load it: {reason}"]
    return []


@functools.lru_cache(maxsize=32)
def _context(cafile: str | None) -> ssl.SSLContext:
    """One context per bundle: loading a system bundle costs ~10 ms of CPU."""
    return ssl.create_default_context(cafile=cafile)
