"""Is an engine answering? One bounded HTTP probe."""

from __future__ import annotations

import aiohttp


async def probe(
    session: aiohttp.ClientSession, host: str, port: int, path: str, timeout_s: float = 2.0
) -> bool:
    url = f"http://{host}:{port}{path}"
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError, OSError):
        return False
