"""SimEngine: vLLM-like continuous batching, KV limits, preemption, abort and timing."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from fairlane.engines.sim.engine import EngineOverloaded, SimEngine, SimRequest
from fairlane.engines.sim.presets import PRESETS, SimPreset

TINY = PRESETS["tiny"]
# Steps of ~1 ms keep the longer scenarios well under a second.
FAST = dataclasses.replace(TINY, base_step_ms=1.0, ms_per_seq=0.0, ms_per_kv_ktoken=0.0)

MakeEngine = Callable[..., Awaitable[SimEngine]]


@pytest.fixture
async def make_engine() -> AsyncIterator[MakeEngine]:
    engines: list[SimEngine] = []

    async def make(preset: SimPreset = TINY, **kwargs: Any) -> SimEngine:
        engine = SimEngine(preset, **kwargs)
        await engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        await engine.stop()


async def until(condition: Callable[[], bool], limit_s: float = 3.0) -> None:
    """Poll engine state (it has no change notifications) for up to ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.001)


async def drain(req: SimRequest) -> tuple[int, float]:
    """All tokens of a request and the loop time it finished."""
    total = 0
    async for n in req:
        total += n
    return total, asyncio.get_running_loop().time()


async def test_solo_ttft_and_decode_step_follow_the_formula(make_engine: MakeEngine) -> None:
    preset = dataclasses.replace(TINY, base_step_ms=10.0, ms_per_prefill_token=0.05)
    engine = await make_engine(preset)
    loop = asyncio.get_running_loop()
    start = loop.time()
    req = engine.submit(prompt_tokens=100, max_tokens=21)
    assert await anext(req) == 1
    ttft = loop.time() - start
    expected = (preset.api_overhead_ms + preset.step_ms(1, 100, 100)) / 1000
    assert expected - 0.001 <= ttft <= expected + 0.015
    first = loop.time()
    total, end = await drain(req)
    assert total == 20
    step = (end - first) / 20
    expected_step = preset.step_ms(1, 0, 110) / 1000
    # Mean over 20 steps; only the first and last wake-ups' jitter (~1 ms) shows.
    assert expected_step * 0.9 <= step <= expected_step * 1.3
    assert engine.stats.ttft.count == 1
    assert engine.stats.generation_tokens == 21
    assert engine.stats.prompt_tokens == 100


def test_preset_numbers_match_their_sources() -> None:
    a100, h100 = PRESETS["a100-8b"], PRESETS["h100-8b"]
    solo_ttft = a100.api_overhead_ms + a100.step_ms(1, 100, 100)
    assert 40 <= solo_ttft <= 60
    assert 7 <= a100.step_ms(1, 0, 500) <= 8
    for batch in (32, 64):
        step = a100.step_ms(batch, 0, batch * 700)
        assert 10 <= step <= 15
        assert 1.5 <= step / h100.step_ms(batch, 0, batch * 700) <= 2.1
    assert 9_000 <= 1000 / a100.ms_per_prefill_token <= 11_000
    assert PRESETS["l4-8b"].kv_cache_tokens == 60_000
    for preset in PRESETS.values():
        assert preset.kv_cache_tokens >= preset.max_model_len
        assert preset.max_num_batched_tokens >= preset.max_num_seqs


async def test_chunked_prefill_takes_several_steps(make_engine: MakeEngine) -> None:
    engine = await make_engine(dataclasses.replace(FAST, max_num_batched_tokens=100))
    req = engine.submit(prompt_tokens=350, max_tokens=2)
    await anext(req)
    assert engine.stats.steps == 4  # 100 + 100 + 100 + 50 prompt tokens


async def test_continuous_batching_up_to_max_num_seqs_then_fcfs(make_engine: MakeEngine) -> None:
    engine = await make_engine(TINY)
    # Answers long enough (~0.4 s) that a stalled poll on a busy machine still sees the
    # first eight running.
    reqs = [engine.submit(prompt_tokens=50, max_tokens=100) for _ in range(12)]
    tasks = [asyncio.create_task(drain(r)) for r in reqs]
    await until(lambda: engine.num_running == 8)
    assert engine.num_waiting == 4
    results = await asyncio.gather(*tasks)
    assert [n for n, _ in results] == [100] * 12
    first_tokens = [r.first_token_at or 0.0 for r in reqs]
    assert 0.0 not in first_tokens
    assert first_tokens == sorted(first_tokens)
    # The ninth starts only when a slot frees: after one of the first eight finished.
    assert reqs[8].first_token_at is not None
    assert reqs[8].first_token_at >= min(end for _, end in results[:8])
    assert engine.stats.requests_finished == 12


async def test_priority_policy_orders_the_waiting_queue(make_engine: MakeEngine) -> None:
    engine = await make_engine(TINY, scheduling_policy="priority")
    # 8 fill the batch (max_num_seqs 8); then 3 low-priority and 2 high-priority wait.
    batch = [engine.submit(prompt_tokens=50, max_tokens=20, priority=1) for _ in range(8)]
    low = [engine.submit(prompt_tokens=50, max_tokens=20, priority=1) for _ in range(3)]
    high = [engine.submit(prompt_tokens=50, max_tokens=20, priority=0) for _ in range(2)]
    results = await asyncio.gather(*(drain(r) for r in batch + low + high))
    assert [n for n, _ in results] == [20] * 13
    started = {id(r): r.first_token_at or 0.0 for r in low + high}
    # The later, higher-priority requests start before every waiting low-priority one,
    # and each group keeps its arrival order.
    assert max(started[id(r)] for r in high) <= min(started[id(r)] for r in low)
    assert [started[id(r)] for r in low] == sorted(started[id(r)] for r in low)


async def test_fcfs_ignores_priority(make_engine: MakeEngine) -> None:
    engine = await make_engine(TINY)
    batch = [engine.submit(prompt_tokens=50, max_tokens=20) for _ in range(8)]
    low = engine.submit(prompt_tokens=50, max_tokens=20, priority=1)
    high = engine.submit(prompt_tokens=50, max_tokens=20, priority=0)
    await asyncio.gather(*(drain(r) for r in [*batch, low, high]))
    assert (low.first_token_at or 0.0) <= (high.first_token_at or 0.0)


async def test_kv_capacity_limits_admission(make_engine: MakeEngine) -> None:
    preset = dataclasses.replace(FAST, kv_cache_tokens=1000, max_model_len=1000)
    engine = await make_engine(preset)
    reqs = [engine.submit(prompt_tokens=400, max_tokens=100) for _ in range(3)]
    tasks = [asyncio.create_task(drain(r)) for r in reqs]
    await until(lambda: engine.num_running == 2)
    await asyncio.sleep(0.02)
    assert (engine.num_running, engine.num_waiting) == (2, 1)  # a free slot, but no KV
    assert engine.kv_usage > 0.8
    assert [n for n, _ in await asyncio.gather(*tasks)] == [100] * 3
    assert engine.stats.preemptions == 0
    assert engine.kv_usage == 0


async def test_kv_overflow_preempts_the_newest_request(make_engine: MakeEngine) -> None:
    preset = dataclasses.replace(FAST, kv_cache_tokens=1000, max_model_len=1000)
    engine = await make_engine(preset)
    old, new = (engine.submit(prompt_tokens=450, max_tokens=120) for _ in range(2))
    (old_total, old_end), (new_total, new_end) = await asyncio.gather(drain(old), drain(new))
    assert engine.stats.preemptions >= 1
    assert (old_total, new_total) == (120, 120)  # recompute keeps the tokens already sent
    assert old_end < new_end
    assert engine.kv_usage == 0


async def test_abort_frees_the_slot_and_kv(make_engine: MakeEngine) -> None:
    engine = await make_engine(FAST)
    reqs = [engine.submit(prompt_tokens=10, max_tokens=1000) for _ in range(9)]
    await until(lambda: engine.num_running == 8)
    assert reqs[8].first_token_at is None
    reqs[0].abort()
    await until(lambda: reqs[8].first_token_at is not None)
    assert reqs[0].finish_reason == "abort"
    assert (await drain(reqs[0]))[0] < 1000  # iteration ends; undelivered tokens come first
    for req in reqs:
        req.abort()
    await until(lambda: engine.num_running == 0)
    assert engine.kv_usage == 0
    assert engine.stats.requests_aborted == 9
    queued = engine.submit(prompt_tokens=10, max_tokens=5)
    queued.abort()  # still in the API delay: never reaches the scheduler
    await until(lambda: queued.finish_reason == "abort")
    assert queued.generated == 0


async def test_flood_delays_a_late_request(make_engine: MakeEngine) -> None:
    engine = await make_engine(FAST)
    solo = engine.submit(prompt_tokens=100, max_tokens=5)
    await drain(solo)
    assert solo.first_token_at is not None
    solo_ttft = solo.first_token_at - solo.arrival
    flood = [engine.submit(prompt_tokens=200, max_tokens=50) for _ in range(40)]
    await until(lambda: engine.num_running == 8)
    assert engine.num_waiting == 32
    late = engine.submit(prompt_tokens=100, max_tokens=5)
    await anext(late)
    assert late.first_token_at is not None
    assert late.first_token_at - late.arrival > 10 * solo_ttft  # the noisy neighbour
    assert all(r.first_token_at is not None for r in flood)  # FCFS: it came after all


async def test_invalid_and_too_long_requests_raise(make_engine: MakeEngine) -> None:
    engine = await make_engine(TINY)
    with pytest.raises(ValueError, match="maximum context length is 2048 tokens"):
        engine.submit(prompt_tokens=2000, max_tokens=100)
    with pytest.raises(ValueError, match="max_tokens at least 0"):
        engine.submit(prompt_tokens=10, max_tokens=-1)
    with pytest.raises(ValueError, match="prompt_tokens must be at least 1"):
        engine.submit(prompt_tokens=0, max_tokens=5)


async def test_a_pooling_request_ends_with_its_prefill(make_engine: MakeEngine) -> None:
    """max_tokens 0 (an embedding): done in the step that completes the prompt, beside
    decodes, with no token generated."""
    engine = await make_engine(TINY)
    decode = engine.submit(prompt_tokens=10, max_tokens=50)
    pooled = engine.submit(prompt_tokens=300, max_tokens=0)
    async for _ in pooled:
        raise AssertionError("a pooling request yields no tokens")
    assert (pooled.finish_reason, pooled.generated) == ("length", 0)
    assert decode.finish_reason is None  # still decoding beside it
    decode.abort()


async def test_full_queue_raises_overloaded(make_engine: MakeEngine) -> None:
    engine = await make_engine(FAST, max_waiting=2)
    for _ in range(8):  # a burst into free slots is not "waiting"
        engine.submit(prompt_tokens=10, max_tokens=1000)
    await until(lambda: engine.num_running == 8)
    engine.submit(prompt_tokens=10, max_tokens=10)
    engine.submit(prompt_tokens=10, max_tokens=10)
    with pytest.raises(EngineOverloaded):
        engine.submit(prompt_tokens=10, max_tokens=10)


async def test_idle_engine_does_not_step_and_stop_ends_requests(make_engine: MakeEngine) -> None:
    engine = await make_engine(FAST)
    await drain(engine.submit(prompt_tokens=10, max_tokens=3))
    steps = engine.stats.steps
    await asyncio.sleep(0.05)
    assert engine.stats.steps == steps
    running = engine.submit(prompt_tokens=10, max_tokens=1000)
    await anext(running)
    await engine.stop()
    assert running.finish_reason == "abort"
    assert (await drain(running))[0] < 1000
    with pytest.raises(RuntimeError, match="not running"):
        engine.submit(prompt_tokens=10, max_tokens=3)
