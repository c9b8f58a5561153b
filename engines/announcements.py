"""Prompts on their way: Fairlane's word to an engine's scheduler that it has admitted a
request the scheduler has not seen yet.

Fairlane admits a request before the engine's scheduler sees it: the body still has to
reach the engine, and vLLM's API server to template and tokenize it (the simulator's
API delay). A light tenant's prompt that arrives mid-step waits out the step in
progress, and when that step carries a worse tenant's prompt it is the longest wait left
to it (docs/benchmarks.md, "Announced prompts"). Told in advance, the scheduler starts
no prompt of a worse priority level while the better one is on its way, so the step in
progress when it arrives is decodes, not a prefill.

The word is a UDP datagram to the engine's host and port (the number of its HTTP port):
the request's priority in ASCII digits. Fire and forget: a lost datagram costs that
request the early hold, nothing else. An expectation ends when a request of its level
reaches the scheduler, or after ``HORIZON_S``. One that ends unmet (its client went
away, the engine refused the request) makes the scheduler ignore expectations for the
next ``HORIZON_S``: requests that never arrive cannot hold worse prompts back more than
half of the time, and a real light prompt holds them for its own prefill anyway.

The scheduler counts, per level, what it heard, and how much came in time to matter: a
step planned between reading an announcement and its request's arrival. An announcement
read in the same pause between steps as its request held nothing back. Fairlane's vLLM
scheduler logs the counts each minute; the simulator exports them.
"""

from __future__ import annotations

import os
import socket
from collections import deque
from dataclasses import dataclass

from fairlane.engines.histogram import Histogram
from fairlane.engines.priority_levels import priority_level

# Longer than a request takes from Fairlane's decision to the engine's scheduler (the
# simulator's a100-8b preset: 30 ms), so an expectation is met, not expired.
HORIZON_S = 0.1
# Expectations one engine keeps at most; more are dropped (a flood of datagrams).
MAX_EXPECTED = 1024
# The environment variable that tells Fairlane's vLLM scheduler where to listen
# (host:port); the supervisor sets it for a managed vLLM.
ADDRESS_ENV = "FAIRLANE_ANNOUNCEMENTS"
_MAX_DATAGRAM = 20  # digits; a longer datagram is not Fairlane's
# The scheduler's lead: from reading an announcement to its request's arrival.
LEAD_BUCKETS_S: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1)
# Levels counted apart (two per priority class); worse ones are counted with the last.
COUNTED_LEVELS = 8


@dataclass
class Heard:
    """What the scheduler heard of one priority level's announcements."""

    announced: int = 0
    met: int = 0
    in_time: int = 0  # met, and seen by a step planned before their request arrived
    expired: int = 0


class ExpectedPrompts:
    """Announced requests not yet arrived, by priority level. A handful of levels at
    most (two per priority class), so ``best`` is cheap on every step. With a socket,
    ``arrived`` and ``best`` first read what it has received."""

    def __init__(
        self, listening: AnnouncementSocket | None = None, horizon_s: float = HORIZON_S
    ) -> None:
        self.listening = listening
        self.horizon_s = horizon_s
        # level -> when each on its way was read, and how many steps had been planned then
        self._pending: dict[int, deque[tuple[float, int]]] = {}
        self._plans = 0  # calls of ``best``: one per step planned
        self._count = 0
        self._ignore_until = float("-inf")
        self.heard: dict[int, Heard] = {}  # by level, the last counting the worse ones too
        self.lead = Histogram(LEAD_BUCKETS_S)  # seconds, of the announcements met

    @property
    def announced(self) -> int:
        return sum(h.announced for h in self.heard.values())

    @property
    def met(self) -> int:
        return sum(h.met for h in self.heard.values())

    def _counts(self, level: int) -> Heard:
        level = min(level, COUNTED_LEVELS - 1)
        counts = self.heard.get(level)
        if counts is None:
            counts = self.heard[level] = Heard()
        return counts

    def expect(self, priority: int, now: float) -> None:
        if self._count >= MAX_EXPECTED:
            return
        level = priority_level(priority)
        self._pending.setdefault(level, deque()).append((now, self._plans))
        self._count += 1
        self._counts(level).announced += 1

    def arrived(self, priority: int, now: float) -> None:
        """A request reached the scheduler: it meets the oldest expectation of its level
        (its announcement was sent before it, so it is read first)."""
        self._receive(now)
        level = priority_level(priority)
        pending = self._pending.get(level)
        if not pending:
            return  # not announced (n > 1's other choices, a request past Fairlane)
        heard_at, plans = pending.popleft()
        self.lead.observe(now - heard_at)
        counts = self._counts(level)
        counts.met += 1
        counts.in_time += self._plans > plans
        self._count -= 1
        if not pending:
            del self._pending[level]

    def best(self, now: float) -> int | None:
        """The best priority level on its way; None when none is, or while ignoring
        expectations after one went unmet."""
        self._receive(now)
        self._plans += 1
        stale = now - self.horizon_s
        for level in [level for level, p in self._pending.items() if p[0][0] <= stale]:
            pending = self._pending[level]
            while pending and pending[0][0] <= stale:
                pending.popleft()
                self._count -= 1
                self._counts(level).expired += 1
                self._ignore_until = now + self.horizon_s
            if not pending:
                del self._pending[level]
        if not self._pending or now < self._ignore_until:
            return None
        return min(self._pending)

    def summary(self) -> str:
        """One line for an engine's log: per level, how many were met, and how many early
        enough to matter (a step was planned knowing of them)."""
        mean_ms = 1000 * self.lead.sum / self.lead.count if self.lead.count else 0.0
        levels = "; ".join(
            f"level {level}{'+' if level == COUNTED_LEVELS - 1 else ''}: {h.announced} "
            f"announced, {h.met} met, {h.in_time} in time for a step planned before their "
            f"request, {h.expired} expired"
            for level, h in sorted(self.heard.items())
        )
        return f"{levels or 'none announced'}; mean lead {mean_ms:.1f} ms"

    def _receive(self, now: float) -> None:
        if self.listening is not None:
            for priority in self.listening.receive():
                self.expect(priority, now)


class AnnouncementSocket:
    """The engine's end: a non-blocking UDP socket, read between steps."""

    def __init__(self, host: str, port: int) -> None:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        self._sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            self._sock.bind(address)
        except OSError:
            self._sock.close()
            raise

    def receive(self) -> list[int]:
        """The priorities in the datagrams waiting (at most ``MAX_EXPECTED``); anything
        but a priority is ignored."""
        priorities: list[int] = []
        for _ in range(MAX_EXPECTED):
            try:
                # One byte more than a priority takes: a longer datagram arrives cut.
                data = self._sock.recv(_MAX_DATAGRAM + 1)
            except OSError:  # nothing more to read (or an ICMP error queued on the socket)
                break
            if data.isdigit() and len(data) <= _MAX_DATAGRAM:
                priorities.append(int(data))
        return priorities

    def close(self) -> None:
        self._sock.close()


def address_from_env() -> tuple[str, int] | None:
    """Where Fairlane's vLLM scheduler listens, from ``ADDRESS_ENV``; None: nowhere."""
    value = os.environ.get(ADDRESS_ENV, "")
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)
