"""What a stranger can reach: the made-up API keys, the stack's policy holding their
sha256 (`fairlane hash-key`), and one raw HTTP/1.1 exchange with its error code."""

from __future__ import annotations

import secrets
import subprocess
import sys
from typing import Any

from testkit.http import build, error_of, exchange

KEY_A = "sk-alice-" + secrets.token_hex(16)
KEY_B = "sk-bob-" + secrets.token_hex(16)


def hash_key(key: str) -> str:
    out = subprocess.run(
        [sys.executable, "-P", "-m", "fairlane.cli", "hash-key", key],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.strip()


def keyed_policy(fake: Any) -> dict[str, Any]:
    """alice (KEY_A, every model) and bob (KEY_B, model-a only) on a tiny simulator
    serving model-a and on the fake engine ``fake``."""
    return {
        "version": 1,
        "tenants": {
            "alice": {"api_keys": [hash_key(KEY_A)]},
            "bob": {"api_keys": [hash_key(KEY_B)], "models": ["model-a"]},
        },
        "engines": {
            "sim": {"kind": "sim", "preset": "tiny", "models": ["model-a"]},
            "fake": fake.engine_config(),
        },
    }


def request(
    port: int,
    method: str,
    path: str,
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    target: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One raw HTTP/1.1 exchange: the path goes out exactly as given (no normalising)."""
    pairs = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    raw = build(method.encode(), (target or path).encode(), pairs, body)
    answer = exchange(port, raw, method, timeout_s=15)
    return answer.status, answer.headers, answer.body


def error_code(status: int, headers: dict[str, str], body: bytes) -> str:
    assert headers.get("content-type") == "application/json", (status, headers, body)
    return str(error_of(body)["code"])
