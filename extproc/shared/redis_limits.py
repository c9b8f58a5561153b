"""Rate limits and daily quotas shared by several gateways: exact, one round trip each.

The same answers as the local ``RateLimiter`` (``fairlane.extproc.limits``) for one
gateway: the same buckets (``burst_seconds`` of the rate, an oversized request taken
only from a full bucket and driving it negative), quota checked first and reset at UTC
midnight, all-or-nothing charging, corrections that may drive the token bucket negative,
and the same Retry-After rounding. The arithmetic runs in Lua inside Redis, on the same
IEEE doubles in the same order as the Python code, and every number is stored with 17
significant digits, so the two agree to the last bit.

One tenant is one Redis hash, ``<prefix>:lim:<tenant>``; a check and a correction are
each one script (EVALSHA), atomic across all gateways, so N gateways can never admit
more than the bucket holds together. Each write sets the key's TTL to when the state
stops carrying information (buckets full again, the quota day over, plus
``inflight_ttl_s`` while requests are in flight), so idle tenants cost no memory.

Clocks: ``now`` is the calling gateway's wall clock. A bucket refills by the newest time
any gateway reported and never backwards, so a gateway whose clock runs ahead by S
seconds can let a tenant through up to S seconds' worth of its rate early, once; a
gateway that is behind refills nothing until its clock catches up. The quota day only
moves forwards (a lagging gateway's request counts against the newer day). Keep the
gateways on NTP: skew of milliseconds is noise against rates per minute.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from redis.asyncio import Redis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from fairlane.extproc.limits import TenantLimits, Verdict, _retry_after
from fairlane.extproc.shared import SharedStateUnavailable, make_client, redacted

log = logging.getLogger(__name__)

# Shared by both scripts: the tenant hash ``s`` as a Lua table, buckets as tables.
_COMMON = r"""
local DAY = 86400.0
local function fmt(x) return string.format('%.17g', x) end
local function load(key)
  local flat = redis.call('HGETALL', key)
  local s = {}
  for i = 1, #flat, 2 do s[flat[i]] = flat[i + 1] end
  return s
end
-- A bucket of `per_minute` sized `burst_s` seconds, at its stored level or full.
local function bucket(per_minute, burst_s, level, at)
  if per_minute == '' then return nil end
  local rate = tonumber(per_minute) / 60.0
  local b = {rate = rate, burst = rate * tonumber(burst_s)}
  b.level = level and tonumber(level) or b.burst
  b.at = at and tonumber(at) or -math.huge
  return b
end
local function refill(b, now)
  if now > b.at then
    b.level = math.min(b.burst, b.level + (now - b.at) * b.rate)
    b.at = now
  end
end
local function stored(s, p)
  return bucket(s[p .. 'pm'], s.bs, s[p .. 'l'], s[p .. 'a'])
end
local function roll(s, now)
  local day = math.floor(now / DAY)
  if day > tonumber(s.day) then s.day = fmt(day); s.used = '0' end
end
-- Write the state back and expire it when it no longer carries information.
local function save(key, s, req, tok, now, inflight_ttl)
  local quiet = -math.huge
  local fields = {'bs', s.bs, 'rpm', s.rpm, 'tpm', s.tpm, 'tpd', s.tpd,
                  'day', s.day, 'used', s.used, 'inflight', s.inflight}
  for p, b in pairs({r = req, t = tok}) do
    if b then
      if b.at == -math.huge then refill(b, now) end  -- a new bucket: full as of now
      quiet = math.max(quiet, b.at + (b.burst - b.level) / b.rate)
      table.insert(fields, p .. 'l'); table.insert(fields, fmt(b.level))
      table.insert(fields, p .. 'a'); table.insert(fields, fmt(b.at))
    end
  end
  if tonumber(s.used) > 0 then quiet = math.max(quiet, (tonumber(s.day) + 1) * DAY) end
  if tonumber(s.inflight) > 0 then quiet = math.max(quiet, now + inflight_ttl) end
  redis.call('HSET', key, unpack(fields))
  redis.call('PEXPIRE', key, math.max(1000, math.ceil((quiet - now) * 1000) + 1000))
end
"""

# KEYS[1] tenant hash; ARGV: now, rpm, tpm, burst_s, tpd ('' = none), est, inflight_ttl.
# Returns {'ok'} or {'quota'|'rate', seconds}.
_CHECK = (
    _COMMON
    + r"""
local key, now = KEYS[1], tonumber(ARGV[1])
local rpm, tpm, bs, tpd = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local est, inflight_ttl = tonumber(ARGV[6]), tonumber(ARGV[7])
local s = load(key)
local req, tok
if s.bs == nil then  -- a new tenant: full buckets
  s = {bs = bs, rpm = rpm, tpm = tpm, tpd = tpd, day = '0', used = '0', inflight = '0'}
  req, tok = bucket(rpm, bs), bucket(tpm, bs)
elseif s.rpm ~= rpm or s.tpm ~= tpm or s.bs ~= bs or s.tpd ~= tpd then
  -- New limits: levels and debt carry over; a larger burst adds its extra room now.
  local function reconfigure(old, per_minute)
    local b = bucket(per_minute, bs)
    if b and old then
      refill(old, now)
      local level = math.min(b.burst, old.level + math.max(0.0, b.burst - old.burst))
      refill(b, now)
      b.level = b.level - (b.burst - level)
    end
    return b
  end
  req, tok = reconfigure(stored(s, 'r'), rpm), reconfigure(stored(s, 't'), tpm)
  s.rpm, s.tpm, s.bs, s.tpd = rpm, tpm, bs, tpd
else
  req, tok = stored(s, 'r'), stored(s, 't')
end
roll(s, now)
if tpd ~= '' and tonumber(s.used) + est > tonumber(tpd) then
  save(key, s, req, tok, now, inflight_ttl)
  return {'quota', fmt((tonumber(s.day) + 1) * DAY - now)}
end
local wait = 0.0
local function need(b, amount)  -- seconds until `amount` can be taken from b
  if b then
    refill(b, now)
    wait = math.max(wait, math.max(0.0, (math.min(amount, b.burst) - b.level) / b.rate))
  end
end
need(req, 1.0)
need(tok, est)
if wait > 0.0 then
  save(key, s, req, tok, now, inflight_ttl)
  return {'rate', fmt(wait)}
end
if req then req.level = req.level - 1.0 end
if tok then tok.level = tok.level - est end
if tpd ~= '' then s.used = fmt(tonumber(s.used) + est) end
s.inflight = tostring(tonumber(s.inflight) + 1)
save(key, s, req, tok, now, inflight_ttl)
return {'ok'}
"""
)

# KEYS[1] tenant hash; ARGV: now, delta_tokens, inflight_ttl. Returns 1, or 0: no state.
_CORRECT = (
    _COMMON
    + r"""
local key, now = KEYS[1], tonumber(ARGV[1])
local delta, inflight_ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
local s = load(key)
if s.bs == nil then return 0 end  -- expired, or admitted while unlimited
local req, tok = stored(s, 'r'), stored(s, 't')
s.inflight = tostring(math.max(0, tonumber(s.inflight) - 1))
roll(s, now)
if tok then
  refill(tok, now)
  if delta > 0 then tok.level = tok.level - delta
  else tok.level = math.min(tok.burst, tok.level + (-delta)) end
end
if s.tpd ~= '' then s.used = fmt(math.max(0.0, tonumber(s.used) + delta)) end
save(key, s, req, tok, now, inflight_ttl)
return 1
"""
)


class RedisRateLimiter:
    """``RateLimiter``'s contract, with the state in Redis and shared by all gateways.

    Call ``correct`` exactly once for every admitted ``check``, as with the local one.
    Both raise ``SharedStateUnavailable`` when Redis does not answer within
    ``timeout_s``; the caller then decides with its local ``RateLimiter``. After a
    failure, calls fail at once (no network) for ``probe_interval_s``, so an outage where
    Redis times out costs one timeout per interval, not one per request.

    A timeout after Redis ran the script leaves the charge in Redis while the caller
    charges its local limiter too: the tenant pays twice for that request, never zero.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "fairlane",
        timeout_s: float = 0.05,
        inflight_ttl_s: float = 3600.0,
        probe_interval_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout_s = timeout_s
        self.inflight_ttl_s = inflight_ttl_s
        self.probe_interval_s = probe_interval_s
        self.available = True
        self.failures = 0  # attempts that could not reach Redis, in total
        self.redis: Redis = make_client(url, timeout_s)
        self._check = self.redis.register_script(_CHECK)
        self._correct = self.redis.register_script(_CORRECT)
        self._clock = clock
        self._down_until = -math.inf

    def key(self, tenant: str) -> str:
        return f"{self.prefix}:lim:{tenant}"

    async def check(
        self, tenant: str, limits: TenantLimits, est_tokens: float, now: float
    ) -> Verdict:
        """Admit and charge (1 request, ``est_tokens`` tokens) or refuse, charging nothing.

        ``now`` is epoch seconds (the quota resets at UTC midnight). Unlimited tenants
        are admitted without a round trip.
        """
        if limits.unlimited:
            return Verdict(admitted=True)
        args = [
            repr(float(now)),
            _opt(limits.requests_per_minute),
            _opt(limits.tokens_per_minute),
            repr(float(limits.burst_seconds)),
            _opt(limits.tokens_per_day),
            repr(float(est_tokens)),
            repr(float(self.inflight_ttl_s)),
        ]
        reply = await self._call(self._check, tenant, args)
        if reply[0] == "ok":
            return Verdict(admitted=True)
        wait = _retry_after(float(reply[1]))
        if reply[0] == "quota":
            return Verdict(False, "quota_exceeded", wait)
        return Verdict(False, "rate_limited", wait)

    async def correct(self, tenant: str, delta_tokens: float, now: float) -> None:
        """Apply real usage minus the estimate to the token bucket and the daily quota.

        A tenant with no state (never limited, or expired ``inflight_ttl_s`` after its
        last admission) is left alone, as with the local limiter.
        """
        args = [repr(float(now)), repr(float(delta_tokens)), repr(float(self.inflight_ttl_s))]
        await self._call(self._correct, tenant, args)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _call(self, script: AsyncScript, tenant: str, args: list[str]) -> list[str]:
        if self._clock() < self._down_until:
            raise SharedStateUnavailable(f"shared state at {redacted(self.url)} is down")
        try:
            reply = await script(keys=[self.key(tenant)], args=args)
        except (RedisError, OSError) as exc:
            self.failures += 1
            self._down_until = self._clock() + self.probe_interval_s
            if self.available:
                self.available = False
                log.warning(
                    "shared limits at %s unavailable (%s): deciding with local limits "
                    "until it answers again",
                    redacted(self.url),
                    exc,
                )
            raise SharedStateUnavailable(f"shared state at {redacted(self.url)}: {exc}") from exc
        if not self.available:
            self.available = True
            log.warning(
                "shared limits at %s answer again after %d failed calls",
                redacted(self.url),
                self.failures,
            )
        return reply if isinstance(reply, list) else [str(reply)]


def _opt(value: float | None) -> str:
    return "" if value is None else repr(float(value))
