"""Fixtures several integration modules share (the stacks themselves are in
tests/conftest.py)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def fake(fake_engine_factory: Any) -> Any:
    """One fake engine per module (FakeEngine: it misbehaves on request)."""
    return fake_engine_factory()
