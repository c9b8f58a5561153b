"""Shared tenant state against a real Redis: the fixed clock and the counter syncs that
the rate-limit, counter-sync and outage modules share."""

from __future__ import annotations

import uuid
from typing import Any

from fairlane.extproc.shared.counter_sync import CounterSync

MIDDAY = 1_700_000_000.0 - 1_700_000_000.0 % 86_400 + 43_200.0  # 12:00 UTC


def syncs(url: str, n: int = 2, **kwargs: Any) -> list[CounterSync]:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    return [CounterSync(url, prefix=prefix, **kwargs) for _ in range(n)]
