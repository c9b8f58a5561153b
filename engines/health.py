"""Is an engine answering? One bounded HTTP probe, and what its result means."""

from __future__ import annotations

import enum

import aiohttp


class Health(enum.Enum):
    OK = "ok"  # 200
    FAILING = "failing"  # a clear no: an error status, or nothing listening
    SILENT = "silent"  # no answer in time: hung, or only busy


async def probe(
    session: aiohttp.ClientSession, host: str, port: int, path: str, timeout_s: float
) -> Health:
    url = f"http://{host}:{port}{path}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return Health.OK if resp.status == 200 else Health.FAILING
    except TimeoutError:
        return Health.SILENT
    except (aiohttp.ClientError, OSError):
        return Health.FAILING
