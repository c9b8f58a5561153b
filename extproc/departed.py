"""Requests whose client left before any answer, remembered for a few seconds.

Envoy's end-of-request record of such a request can overtake the decision that gives it
a slot: a busy worker reads the record stream and the request's own decision stream in
either order. A slot granted after the record would never come back, so the grant looks
here first. Bounded in time and in size, whatever the rate of departures.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

KEEP_S = 10.0  # far longer than a record can overtake a decision (milliseconds)
MAX_KEPT = 65_536


class Departed:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._since: OrderedDict[str, float] = OrderedDict()  # request id -> when it left

    def add(self, request_id: str) -> None:
        now = self._clock()
        self._since[request_id] = now
        self._since.move_to_end(request_id)
        while self._since:
            oldest, since = next(iter(self._since.items()))
            if since + KEEP_S > now and len(self._since) <= MAX_KEPT:
                break
            del self._since[oldest]

    def claim(self, request_id: str) -> bool:
        """Did this request's client leave (forgotten once asked)?"""
        return self._since.pop(request_id, None) is not None

    def __len__(self) -> int:
        return len(self._since)
