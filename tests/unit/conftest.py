"""Fixtures shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop that is not running: for objects that only need one to exist (the
    simulator's requests, stepped by hand)."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()
