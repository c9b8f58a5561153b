"""What Fairlane asks of Envoy's admin API: which cluster configuration it runs."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from fairlane.policy import ListenerConfig

log = logging.getLogger(__name__)
_CDS_VERSION = "/stats?filter=^cluster_manager\\.cds\\.version_text$&format=json"


def admin_url(listener: ListenerConfig) -> str:
    # Listening on every address: ask on loopback (Envoy binds "::" IPv6-only).
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(listener.admin_host, listener.admin_host)
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return f"http://{host}:{listener.admin_port}"


async def wait_for_cds(admin: str, version: int, timeout_s: float) -> bool:
    """Wait until Envoy has applied CDS ``version`` (or a later one) from the file.

    False at once when no Envoy listens there (one that starts later reads the file
    then), and after ``timeout_s`` when one does but has not applied it.
    """
    deadline = time.monotonic() + timeout_s
    timeout = aiohttp.ClientTimeout(total=max(timeout_s, 0.1))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            try:
                async with session.get(admin + _CDS_VERSION) as resp:
                    stats = (await resp.json(content_type=None)).get("stats", [])
            except aiohttp.ClientConnectorError:
                return False
            except (aiohttp.ClientError, TimeoutError, ValueError):
                stats = []
            applied = stats[0].get("value", "") if stats else ""
            if applied.isdigit() and int(applied) >= version:
                return True
            if time.monotonic() >= deadline:
                log.warning("Envoy has not applied CDS version %d after %.1fs", version, timeout_s)
                return False
            await asyncio.sleep(0.005)
