"""An asyncio load generator for streaming OpenAI chat completions.

One aiohttp session (one connection pool) issues ``stream: true`` chat completions with a
fixed ``max_tokens`` and a prompt of N words, either closed-loop (C requests always in
flight) or open-loop (a seeded Poisson process per tenant). Each request records its
tenant, send time, time to first token (the first SSE chunk whose ``delta.content`` is
not empty), end time, content chunks received, HTTP status and error. A lag monitor
sleeps 10 ms in a loop and records how late it wakes: on a shared 2-core box the load
generator's own stalls are the first suspect for a bad tail, so every run reports them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from fairlane.bench.records import RequestRecord, RunResult, read_events
from fairlane.bench.stats import poisson_arrivals, tenant_rng

LAG_INTERVAL_S = 0.010
ERROR_BACKOFF_S = 0.1  # a closed-loop worker whose request failed at once waits this long
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Workload:
    base_url: str  # http(s)://127.0.0.1:PORT (the first gateway when there are several)
    model: str
    prompt_words: int
    max_tokens: int
    request_timeout_s: float = 120.0
    max_tokens_spread: float = 0.0  # > 0: max_tokens varies +-this fraction, same mean
    seed: int = 0
    more_urls: tuple[str, ...] = ()  # further gateways: tenants go round-robin over all
    pinned: frozenset[str] = frozenset()  # tenants that only ever use base_url
    # Tenants whose answers have a max_tokens of their own (fixed), e.g. short chats.
    max_tokens_of: tuple[tuple[str, int], ...] = ()
    # Each prompt starts with a word of its own, so an engine's prefix cache (vLLM's is
    # on by default) never serves one: the words are otherwise the same in every request.
    unique_prompts: bool = False

    def urls(self, tenant: str) -> tuple[str, ...]:
        """The base URLs ``tenant``'s requests take turns over."""
        if tenant in self.pinned:
            return (self.base_url,)
        return (self.base_url, *self.more_urls)

    def lengths(self) -> list[int]:
        """The max_tokens values requests draw from (uniformly): 9 evenly spaced ones
        centred on ``max_tokens``, or just it."""
        if self.max_tokens_spread <= 0:
            return [self.max_tokens]
        low = self.max_tokens * (1 - self.max_tokens_spread)
        step = 2 * self.max_tokens * self.max_tokens_spread / 8
        return [max(1, round(low + i * step)) for i in range(9)]

    def prompt(self) -> str:
        """N distinct-looking four-character words: 5 characters (~1.25 tokens) each."""
        return " ".join(f"w{i % 1000:03d}" for i in range(self.prompt_words))

    def body(self, max_tokens: int, lead: str = "") -> bytes:
        """A request's body; ``lead``, if any, is the prompt's first word."""
        content = f"{lead} {self.prompt()}" if lead else self.prompt()
        return json.dumps(
            {
                "model": self.model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens,
                "stream": True,
            }
        ).encode()


def round_robin(urls: tuple[str, ...], turn: int) -> str:
    """The URL a tenant's ``turn``-th request (0, 1, ...) goes to."""
    return urls[turn % len(urls)]


class Client:
    """Issues requests for one workload over one connection pool; async context manager.

    With several gateways (``Workload.more_urls``) each tenant's requests take turns over
    them, like a round-robin load balancer in front of them would send them.

    aiohttp, reading the body with ``iter_any`` and splitting SSE events itself: ~60 µs
    of CPU per streamed token here, against ~100 µs iterating lines and ~46 µs for a
    hand-written HTTP/1.1 protocol (measured; docs/benchmarks.md), not worth its code.
    """

    def __init__(self, workload: Workload) -> None:
        self.workload = workload
        self._url = workload.base_url + CHAT_PATH
        self._lengths = workload.lengths()
        self._own_lengths = {t: [n] for t, n in workload.max_tokens_of}
        every = {*self._lengths, *(n for _, n in workload.max_tokens_of)}
        self._bodies = {n: workload.body(n) for n in every}
        self._lead = f"r{secrets.token_hex(4)}-"  # + a count: unique across arms and runs
        self._sent = itertools.count()
        self._rng = random.Random(workload.seed)
        self._turns: dict[str, int] = {}
        self._session: aiohttp.ClientSession | None = None

    def body_for(self, tenant: str) -> bytes:
        """The body of ``tenant``'s next request (its max_tokens drawn, or its own)."""
        max_tokens = self._rng.choice(self._own_lengths.get(tenant, self._lengths))
        if self.workload.unique_prompts:
            return self.workload.body(max_tokens, f"{self._lead}{next(self._sent)}")
        return self._bodies[max_tokens]

    def url_for(self, tenant: str) -> str:
        """Where ``tenant``'s next request goes (and count the turn)."""
        if not self.workload.more_urls:
            return self._url
        turn = self._turns.get(tenant, 0)
        self._turns[tenant] = turn + 1
        return round_robin(self.workload.urls(tenant), turn) + CHAT_PATH

    async def __aenter__(self) -> Client:
        timeout = aiohttp.ClientTimeout(total=self.workload.request_timeout_s, sock_connect=5)
        # ssl=False: HTTPS without checking the certificate (a benchmark's throwaway one).
        connector = aiohttp.TCPConnector(limit=0, ssl=False)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout)
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._session is not None:
            await self._session.close()

    async def request(
        self, tenant: str, clock: Callable[[], float], on_token: Callable[[str], None]
    ) -> RequestRecord:
        assert self._session is not None, "use the Client as an async context manager"
        record = RequestRecord(tenant, clock())
        headers = {"content-type": "application/json", "x-tenant-id": tenant}
        try:
            body = self.body_for(tenant)
            url = self.url_for(tenant)
            async with self._session.post(url, data=body, headers=headers) as resp:
                record.status = resp.status
                if resp.status != 200:
                    text = await resp.read()
                    record.error = text[:200].decode("utf-8", "replace")
                elif not await read_events(resp, record, clock, on_token):
                    record.error = "stream ended without [DONE]"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            record.error = f"{type(exc).__name__}: {exc}"
        record.end = clock()
        return record


class _Run:
    """The shared state of one run: clock, records, window bookkeeping."""

    def __init__(self, client: Client, warmup_s: float, duration_s: float) -> None:
        self.client = client
        self.t0 = time.perf_counter()
        self.window = (warmup_s, warmup_s + duration_s)
        self.records: list[RequestRecord] = []
        self.tokens: dict[str, int] = {}
        self.tokens_at_start: dict[str, int] = {}
        self.tokens_at_end: dict[str, int] = {}
        self.lag: list[float] = []
        self.send_lag: list[float] = []
        self.active = 0

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def count_token(self, tenant: str) -> None:
        self.tokens[tenant] = self.tokens.get(tenant, 0) + 1

    async def send(self, tenant: str) -> RequestRecord:
        self.active += 1
        try:
            record = await self.client.request(tenant, self.now, self.count_token)
        finally:
            self.active -= 1
        self.records.append(record)
        return record

    async def watch(self) -> None:
        """Snapshot tokens at the window's edges and sample loop lag inside it."""
        start, end = self.window
        await asyncio.sleep(max(0.0, start - self.now()))
        self.tokens_at_start = dict(self.tokens)
        while self.now() < end:
            before = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.lag.append(time.perf_counter() - before - LAG_INTERVAL_S)
        self.tokens_at_end = dict(self.tokens)

    async def finish(self, tasks: list[asyncio.Task[None]], drain_timeout_s: float) -> RunResult:
        everything = [*tasks, asyncio.create_task(self.watch())]
        remaining = self.window[1] - self.now() + drain_timeout_s
        try:
            await asyncio.wait(everything, timeout=max(0.0, remaining))
        finally:  # the drain timed out, or the run itself was cancelled (a signal)
            unfinished = self.active
            pending = [task for task in everything if not task.done()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        start = self.tokens_at_start
        end = self.tokens_at_end or dict(self.tokens)
        return RunResult(
            records=self.records,
            window=self.window,
            window_tokens={t: n - start.get(t, 0) for t, n in end.items()},
            lag_s=self.lag,
            send_lag_s=self.send_lag,
            unfinished=unfinished,
        )


async def closed_loop(
    client: Client,
    tenant: str,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    drain_timeout_s: float = 60.0,
) -> RunResult:
    """``concurrency`` workers, each sending its next request when the last one ends,
    until warm-up + duration; requests sent before the end are waited for."""
    run = _Run(client, warmup_s, duration_s)
    stop_at = run.window[1]

    async def worker() -> None:
        while run.now() < stop_at:
            record = await run.send(tenant)
            if record.status == 0:
                await asyncio.sleep(ERROR_BACKOFF_S)

    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    return await run.finish(tasks, drain_timeout_s)


def arrival_schedule(
    rates: dict[str, float], seed: int, horizon_s: float, starts: dict[str, float]
) -> list[tuple[float, str]]:
    """(time, tenant) of every send up to ``horizon_s``, in order: each tenant's seeded
    Poisson times, those before its ``starts`` time (default 0 s) left out, so a late
    start keeps the same times after it."""
    return sorted(
        (t, tenant)
        for index, (tenant, rate) in enumerate(rates.items())
        for t in poisson_arrivals(rate, horizon_s, tenant_rng(seed, index))
        if t >= starts.get(tenant, 0.0)
    )


async def open_loop(
    client: Client,
    rates: dict[str, float],
    seed: int,
    warmup_s: float,
    duration_s: float,
    drain_timeout_s: float = 120.0,
    starts: dict[str, float] | None = None,
) -> RunResult:
    """Each tenant sends at Poisson times of its rate (req/s), seeded per tenant index,
    from its ``starts`` time on (default 0 s); a request's fate never delays the next
    send."""
    run = _Run(client, warmup_s, duration_s)
    schedule = arrival_schedule(rates, seed, run.window[1], starts or {})
    in_flight: set[asyncio.Task[RequestRecord]] = set()

    async def dispatch() -> None:
        for at, tenant in schedule:
            delay = at - run.now()
            if delay > 0:
                await asyncio.sleep(delay)
            run.send_lag.append(max(0.0, run.now() - at))
            task = asyncio.create_task(run.send(tenant))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.wait(set(in_flight))

    try:
        return await run.finish([asyncio.create_task(dispatch())], drain_timeout_s)
    finally:
        await _cancel_all(in_flight)


async def _cancel_all(tasks: set[asyncio.Task[RequestRecord]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
