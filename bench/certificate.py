"""A throwaway self-signed certificate for a benchmark's HTTPS gateway (openssl CLI)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def self_signed(directory: Path) -> tuple[Path, Path]:
    """(cert_file, key_file) for 127.0.0.1: an ECDSA P-256 pair, what a modern CA issues."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise RuntimeError("--https needs the openssl command to make its certificate")
    cert, key = directory / "bench-cert.pem", directory / "bench-key.pem"
    subprocess.run(
        [
            openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
            "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return cert, key
