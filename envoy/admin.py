"""What Fairlane asks of Envoy's admin API: which cluster configuration it runs."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import aiohttp

from fairlane.policy import ListenerConfig

log = logging.getLogger(__name__)


def admin_url(listener: ListenerConfig) -> str:
    # Listening on every address: ask on loopback (Envoy binds "::" IPv6-only).
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listener.admin_host, listener.admin_host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{listener.admin_port}"


async def read_stat(
    session: aiohttp.ClientSession, admin: str, name: str, timeout_s: float = 2.0
) -> str | None:
    """One stat's value as Envoy's admin prints it; None when it has no such stat or does
    not answer in time. Raises ``aiohttp.ClientConnectorError`` when nothing listens."""
    params = {"filter": f"^{re.escape(name)}$", "format": "json"}
    try:
        async with session.get(
            admin + "/stats", params=params, timeout=aiohttp.ClientTimeout(total=timeout_s)
        ) as resp:
            stats = (await resp.json(content_type=None)).get("stats", [])
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError, AttributeError):
        return None
    value = stats[0].get("value") if stats else None
    return None if value is None else str(value)


async def wait_for_cds(admin: str, version: int, timeout_s: float) -> bool:
    """Wait until Envoy has applied CDS ``version`` (or a later one) from the file.

    False at once when no Envoy listens there (one that starts later reads the file
    then), and after ``timeout_s`` when one does but has not applied it.
    """
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            left = max(deadline - time.monotonic(), 0.1)  # the whole wait is bounded
            try:
                applied = await read_stat(session, admin, "cluster_manager.cds.version_text", left)
            except aiohttp.ClientConnectorError:
                return False
            if applied is not None and applied.isdigit() and int(applied) >= version:
                return True
            if time.monotonic() >= deadline:
                log.warning("Envoy has not applied CDS version %d after %.1fs", version, timeout_s)
                return False
            await asyncio.sleep(0.005)
