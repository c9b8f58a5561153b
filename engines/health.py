"""Is an engine answering? One bounded HTTP probe, and what its result means."""

from __future__ import annotations

import enum
import ssl as ssl_module

import aiohttp


class Health(enum.Enum):
    OK = "ok"  # 200
    FAILING = "failing"  # a clear no: an error status, or nothing listening
    SILENT = "silent"  # no answer in time: hung, or only busy
    UNTRUSTED = "untrusted"  # an https engine whose certificate did not verify: a no too


async def probe(
    session: aiohttp.ClientSession,
    url: str,
    timeout_s: float,
    ssl: ssl_module.SSLContext | bool = True,
) -> Health:
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with session.get(url, timeout=timeout, ssl=ssl) as resp:
            return Health.OK if resp.status == 200 else Health.FAILING
    except TimeoutError:
        return Health.SILENT
    except aiohttp.ClientConnectorCertificateError:
        return Health.UNTRUSTED
    except (aiohttp.ClientError, OSError):
        return Health.FAILING
