"""Tenant state shared by several gateways through one Redis.

Two parts, with different guarantees:

- ``RedisRateLimiter`` (``redis_limits``): token buckets and daily quotas, EXACT across
  gateways. Each check is one Lua script, run atomically by Redis: one round trip.
- ``CounterSync`` (``counter_sync``): the fair schedulers' virtual token counters,
  synchronised in the background with bounded staleness.

Both take the Redis URL and build their own client (``make_client``): the limiter sits
in the request path and wants a short socket timeout, the sync loop does not. When
Redis cannot be reached they raise (limiter) or keep accumulating locally (sync); the
gateway falls back to its local state and never fails open on authentication, which is
checked locally from the policy either way.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError

__all__ = ["SharedStateUnavailable", "make_client", "redacted"]


class SharedStateUnavailable(Exception):
    """Redis could not answer in time: use the gateway's local state for this decision."""


def make_client(url: str, timeout_s: float, max_connections: int = 32) -> Redis:
    """A client that fails fast: ``timeout_s`` to connect, to get a pooled connection and
    for each reply.

    Up to ``max_connections`` commands are in flight at once (Redis runs them one at a
    time anyway); more wait for a free connection, up to ``timeout_s``. redis-py retries
    a failed command with backoff by default; here only a connection error is retried,
    once and at once (a pooled connection that Redis closed, e.g. after a restart),
    never a timeout: in the request path, the caller's local fallback is the retry.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(ConnectionError,)),
        decode_responses=True,
    )
    return Redis.from_pool(pool)


def redacted(url: str) -> str:
    """The URL without its credentials, for logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"
