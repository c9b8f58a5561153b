"""What the load generator records: one streamed request, one run, and the SSE reader.

``read_events`` is shared by every benchmark that streams: it times the first content
chunk (the first whose ``delta.content`` is not empty: TTFT) and counts the chunks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp


@dataclass(slots=True)
class RequestRecord:
    tenant: str
    sent: float  # seconds since the run started
    ttft: float | None = None  # seconds from send to the first content chunk
    end: float = 0.0
    tokens: int = 0  # content chunks received (one token each from the simulator)
    status: int = 0  # HTTP status; 0 when no response arrived
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


@dataclass
class RunResult:
    records: list[RequestRecord]
    window: tuple[float, float]  # [start, end) of the measured part, in run seconds
    window_tokens: dict[str, int]  # content chunks received inside the window, per tenant
    lag_s: list[float]  # event-loop wake-up overshoots inside the window
    send_lag_s: list[float]  # open loop: how late each send was against its schedule
    unfinished: int  # requests cancelled at the drain timeout

    @property
    def seconds(self) -> float:
        return self.window[1] - self.window[0]

    def measured(self, tenant: str | None = None) -> list[RequestRecord]:
        """Requests sent inside the window (of one tenant, or all)."""
        start, end = self.window
        return [
            r
            for r in self.records
            if start <= r.sent < end and (tenant is None or r.tenant == tenant)
        ]

    def completed(self, tenant: str | None = None) -> list[RequestRecord]:
        """Successful requests that ended inside the window (throughput, by end time)."""
        start, end = self.window
        return [
            r
            for r in self.records
            if r.ok and start <= r.end < end and (tenant is None or r.tenant == tenant)
        ]


async def read_events(
    resp: aiohttp.ClientResponse,
    record: RequestRecord,
    clock: Callable[[], float],
    on_token: Callable[[str], None],
) -> bool:
    """Count content chunks and time the first; True when ``data: [DONE]`` arrived."""
    pending = b""
    async for data in resp.content.iter_any():
        events = (pending + data).split(b"\n\n")
        pending = events.pop()
        for event in events:
            if not event.startswith(b"data: "):
                continue
            payload = event[6:]
            if payload == b"[DONE]":
                return True
            for choice in json.loads(payload).get("choices") or ():
                if (choice.get("delta") or {}).get("content"):
                    if record.ttft is None:
                        record.ttft = clock() - record.sent
                    record.tokens += 1
                    on_token(record.tenant)
    return False
