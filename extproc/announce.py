"""The worker's end of announcements (``fairlane.engines.announcements``): a datagram to
the engine's scheduler for each request admitted to an engine that isolates prefills,
sent before Envoy forwards the request, so the scheduler knows of it that much sooner.

One unconnected UDP socket per address family, non-blocking: a send costs a system call
and never waits; one that fails costs that request its early hold, nothing else, and is
counted in ``fairlane_announcements_total{outcome="failed"}``.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fairlane.extproc.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Target:
    sock: socket.socket
    address: tuple[str, int]
    sent: Any  # fairlane_announcements_total's children for this engine
    failed: Any


class Announcer:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._targets: dict[str, _Target] = {}  # by engine
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
            counted = self._metrics.announcements
            self._targets[engine] = _Target(
                self._sockets[family],
                (host, port),
                self._metrics.child(counted, engine, "sent"),
                self._metrics.child(counted, engine, "failed"),
            )

    def announce(self, engine: str, priority: int) -> None:
        target = self._targets.get(engine)
        if target is None:
            return
        try:
            target.sock.sendto(b"%d" % priority, target.address)
        except OSError:  # a full buffer, say: the request goes on
            target.failed.inc()
        else:
            target.sent.inc()

    def close(self) -> None:
        for sock in self._sockets.values():
            sock.close()
        self._sockets.clear()
        self._targets = {}


def _family(host: str) -> int:
    version = ipaddress.ip_address(host).version
    return socket.AF_INET6 if version == 6 else socket.AF_INET
