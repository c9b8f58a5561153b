"""Reading Prometheus text pages: Fairlane's /metrics, the control port's, an engine's."""

from __future__ import annotations

from typing import Any

import aiohttp

from testkit.http import SHORT
from testkit.waits import eventually

Sample = tuple[str, dict[str, str], float]


async def scrape(url: str) -> str:
    """The text of a Prometheus page (asserting a 200)."""
    async with aiohttp.ClientSession(timeout=SHORT) as session, session.get(url) as resp:
        assert resp.status == 200, url
        return await resp.text()


def samples(text: str) -> list[Sample]:
    """(name, labels, value) of every sample of a Prometheus text page."""
    found = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        series, number = line.rsplit(" ", 1)
        name, _, rest = series.partition("{")
        labels = {}
        for pair in rest.rstrip("}").split(","):
            if "=" in pair:
                key, raw = pair.split("=", 1)
                labels[key] = raw.strip('"')
        found.append((name, labels, float(number)))
    return found


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` that carry these labels (and maybe others)."""
    return sum(
        (
            v
            for n, got, v in samples(text)
            if n == name and all(got.get(k) == want for k, want in labels.items())
        ),
        0.0,
    )


async def total(url: str, name: str, **labels: str) -> float:
    """``value`` on the page at ``url``."""
    return value(await scrape(url), name, **labels)


async def metric(stack: Any, name: str, **labels: str) -> float:
    """``value`` on the stack's /metrics."""
    return await total(stack.url + "/metrics", name, **labels)


async def metric_is(stack: Any, want: float, name: str, **labels: str) -> bool:
    return await metric(stack, name, **labels) == want


async def _held(stack: Any) -> dict[str, float]:
    """Every in-flight and queue-depth series that is not zero (empty means at rest)."""
    return {
        f"{n}{lbl}": v
        for n, lbl, v in samples(await scrape(stack.url + "/metrics"))
        if n in ("fairlane_inflight", "fairlane_queue_depth") and v != 0
    }


async def assert_at_rest(stack: Any, timeout_s: float = 5.0) -> None:
    """Wait for every slot and queue entry to be given back; fail if one is not."""

    async def rest() -> bool:
        return not await _held(stack)

    if not await eventually(rest, timeout_s):
        raise AssertionError(f"slots or queue entries leaked: {await _held(stack)}")


async def charged(stack: Any, tenant: str, model: str) -> tuple[float, float]:
    """The (prompt, completion) tokens charged to ``tenant`` for ``model`` so far."""
    text = await scrape(stack.url + "/metrics")
    prompt, completion = (
        value(text, "fairlane_tokens_total", tenant=tenant, model=model, kind=kind)
        for kind in ("prompt", "completion")
    )
    return prompt, completion


async def charged_since(
    stack: Any, tenant: str, model: str, before: tuple[float, float]
) -> tuple[int, int]:
    """The (prompt, completion) tokens charged since ``before`` (from ``charged``), once
    the request's end is recorded: Envoy's access log reaches the worker just after the
    response. The reading after the first change has both counts of that request."""

    async def changed() -> bool:
        return await charged(stack, tenant, model) != before

    await eventually(changed, 3.0)
    prompt, completion = await charged(stack, tenant, model)
    return int(prompt - before[0]), int(completion - before[1])
