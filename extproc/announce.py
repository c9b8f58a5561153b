"""The worker's end of announcements (``fairlane.engines.announcements``): a datagram to
the engine's scheduler for each request admitted to an engine that isolates prefills,
sent before Envoy forwards the request, so the scheduler knows of it that much sooner.

One unconnected UDP socket per address family, non-blocking: a send costs a system call
and never waits; one that fails costs that request its early hold, nothing else.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)


class Announcer:
    def __init__(self) -> None:
        # engine -> the socket to send from and where the engine listens
        self._targets: dict[str, tuple[socket.socket, tuple[str, int]]] = {}
        self._sockets: dict[int, socket.socket] = {}  # address family -> socket

    def listen_at(self, addresses: Mapping[str, tuple[str, int]]) -> None:
        """The engines that listen for announcements, and where (their host and port);
        replaces the last set. A host must be an IP address: no name lookups when sending."""
        self._targets = {}
        for engine, (host, port) in addresses.items():
            try:
                family = _family(host)
            except ValueError:
                log.warning("engine %s: host %r is not an IP address; not announcing", engine, host)
                continue
            if family not in self._sockets:
                sock = socket.socket(family, socket.SOCK_DGRAM)
                sock.setblocking(False)
                self._sockets[family] = sock
            self._targets[engine] = (self._sockets[family], (host, port))

    def announce(self, engine: str, priority: int) -> None:
        target = self._targets.get(engine)
        if target is None:
            return
        sock, address = target
        with contextlib.suppress(OSError):  # a full buffer, say: the request goes on
            sock.sendto(b"%d" % priority, address)

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._targets = {}


def _family(host: str) -> int:
    version = ipaddress.ip_address(host).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET
