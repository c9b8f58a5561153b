"""Free ports for the servers Fairlane starts: managed engines (and, in benchmarks and
tests, whole stacks).

Not a port the kernel picks (bind to port 0): that one is in the ephemeral range, where
any outgoing connection (Envoy's to the engines, say) can take it in the seconds before
the server binds it; vLLM binds only after loading its model. Ports come instead from
below the ephemeral range, in a random order, each offered once per process.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Collection, Iterator
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LINUX_EPHEMERAL_START = 32768
LOWEST = 20000


def _ephemeral_start() -> int:
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LINUX_EPHEMERAL_START


def _candidates() -> Iterator[int]:
    top = _ephemeral_start()
    if top - LOWEST >= 1000:
        yield from random.sample(range(LOWEST, top), top - LOWEST)
    while True:  # no room below the ephemeral range (or all used): let the kernel pick
        yield 0


_candidates_left = _candidates()


def free_port(host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A port nothing listens on now on ``host``, not offered before by this process,
    and not in ``avoid``: ports another server was told to take but may not have bound
    yet (another process picked them, so this one cannot know they are spoken for)."""
    for port in _candidates_left:
        if port in avoid:
            continue
        with socket.socket(_family(host)) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                if port == 0:
                    raise
                continue
            return int(sock.getsockname()[1])
    raise AssertionError("unreachable: the candidates never end")


def bind_error(host: str, port: int) -> str | None:
    """Why a server could not listen on ``host:port`` now; None when it could.

    Probed as servers bind (Envoy, aiohttp and uvicorn all set SO_REUSEADDR), so the
    TIME_WAIT connections a stopped server leaves behind for a minute do not read as the
    port being in use: only another socket bound there does.
    """
    with socket.socket(_family(host)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.strerror or str(exc)
    return None


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
