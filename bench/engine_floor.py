"""`fairlane bench engine-floor`: the quiet tenant's TTFT the engine itself allows while
a flooder keeps it full: no Envoy, no Fairlane, no HTTP.

The simulator's engine core runs in this process, scheduling by priority as the fair
arm of ``noisy-neighbor`` has it. A quiet tenant sends Poisson arrivals at priority 0;
a flooder holds ``max_num_seqs - reserved`` requests in the engine at priority 3, as
Fairlane's fair scheduler with headroom holds it, so every quiet request is admitted at
once and jumps the engine's waiting queue. Whatever the quiet tenant still loses here
is the engine's own: its prefill shares a step with a full batch of decodes and with
the prefills that keep the flooder's batch full. Arms:

- ``solo``: the quiet tenant alone;
- ``held``: plus the flooder, each freed slot refilled at once (Fairlane's fair arm);
- ``paced-F``: plus the flooder, its admissions spaced by Fairlane's own pacer
  (``extproc/pacing.py``, the policy's ``pacing: F``) to F x the completion rate it
  measures, so fewer of its prefills land in one step.

``held`` is what Fairlane's fair arm feeds the engine and ``paced-F`` what its pacer
does; whatever the quiet tenant still loses in them is the engine's step, which no
admission order shortens. ``--isolate-prefills prompts step off`` runs the flooded arms
with each of the engine's prefill isolations (the policy's ``isolate_prefills``: the
quiet prompt's step carries no flooder prompt, or nothing of the flooder's) and without;
``--announce on off`` the isolated ones with and without Fairlane's word of each request
before the engine's scheduler sees it (``fairlane.engines.announcements``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fairlane.bench.noisy_report import DEFAULT_HEADROOM
from fairlane.bench.report import RESULTS_DIR, config_of, machine, table, write_json
from fairlane.bench.stats import fmt, poisson_arrivals, ratio, summarize, tenant_rng
from fairlane.engines.priority_levels import PRIORITY_LEVEL_SPAN
from fairlane.engines.sim.engine import SimEngine, SimRequest
from fairlane.engines.sim.presets import PRESETS
from fairlane.engines.vllm_scheduler import Isolation
from fairlane.extproc.pacing import AdmissionPacer
from fairlane.extproc.replicas import reserved_slots

# Priority levels as Fairlane gives them (``engine_priority``): interactive under its
# share, batch over it. Holds compare levels, so the two must differ in level.
QUIET_PRIORITY, FLOODER_PRIORITY = 0, 3 * PRIORITY_LEVEL_SPAN


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="a100-8b", choices=sorted(PRESETS))
    parser.add_argument("--prompt-tokens", type=int, default=508, help="noisy-neighbor's 400 words")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--quiet-rps", type=float, default=1.0)
    parser.add_argument(
        "--headroom", type=float, default=DEFAULT_HEADROOM, help="slots the flooder leaves"
    )
    parser.add_argument("--pace", type=float, nargs="*", default=[1.1, 1.5], help="`pacing`s")
    parser.add_argument(
        "--max-num-batched-tokens",
        type=int,
        nargs="+",
        default=None,
        help="the engine's token budget per step (vLLM's flag); every arm runs at each, "
        "ratios against the first (default: the preset's)",
    )
    parser.add_argument(
        "--isolate-prefills",
        nargs="+",
        choices=["prompts", "step", "off", "on"],
        default=["prompts"],
        help="the engine's prefill isolation (the policy's `isolate_prefills`: prompts by "
        "default; on is prompts); every flooded arm runs at each",
    )
    parser.add_argument(
        "--announce",
        nargs="+",
        choices=["on", "off"],
        default=["on"],
        help="with isolation, Fairlane's word of each request before it reaches the "
        "scheduler (the policy's `announce`, on by default); every isolated arm runs at each",
    )
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--warmup", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "engine-floor.json")


@dataclass
class Arm:
    name: str
    budget: int  # the engine's max_num_batched_tokens
    flooder_slots: int  # 0: no flooder
    pacing: float = 0.0  # the policy's `pacing` factor; 0: each freed slot refilled at once
    isolate: Isolation | None = "prompts"  # the engine's isolate_prefills
    announce: bool = True  # with isolate: each request announced as Fairlane does
    ttfts: list[float] = field(default_factory=list)
    flooder_tokens: int = 0

    def result(self, duration_s: float, solo_p99: float | None, held: Arm | None) -> dict[str, Any]:
        quiet = summarize(self.ttfts, scale=1000)
        announced = self.announce and self.isolate is not None
        tok_s = self.flooder_tokens / duration_s
        return {
            "arm": self.name,
            "max_num_batched_tokens": self.budget,
            "pacing": self.pacing or None,
            "isolate_prefills": (self.isolate or "off") if self.flooder_slots else None,
            "announced": announced if self.flooder_slots else None,
            "quiet_ttft_ms": quiet,
            "quiet_p99_x_solo": ratio(quiet["p99"], solo_p99),
            "flooder_tokens_per_s": tok_s if self.flooder_slots else None,
            "flooder_x_held": (
                ratio(tok_s, held.flooder_tokens / duration_s)
                if self.flooder_slots and held
                else None
            ),
        }


async def measure(arm: Arm, args: argparse.Namespace) -> None:
    """Run one arm on a fresh engine; TTFTs and flooder tokens inside the window only."""
    preset = replace(PRESETS[args.preset], max_num_batched_tokens=arm.budget)
    engine = SimEngine(preset, scheduling_policy="priority", isolate_prefills=arm.isolate)
    await engine.start()
    window_start: float = time.monotonic() + args.warmup
    window_end: float = window_start + args.duration
    completion = asyncio.Event()  # a slot freed, or the pacer's rate moved
    holding = 0
    pacer = (
        AdmissionPacer.for_pool(arm.pacing, time.monotonic(), arm.flooder_slots)
        if arm.pacing
        else None
    )
    tasks: set[asyncio.Task[None]] = set()

    def in_window() -> bool:
        return window_start <= time.monotonic() < window_end

    async def stream(request: SimRequest, quiet: bool, turns: float = 0.0) -> None:
        nonlocal holding
        sent, first = time.monotonic(), True
        sent_in_window = in_window()
        async for _ in request:
            if quiet and first and sent_in_window:
                arm.ttfts.append(time.monotonic() - sent)
            elif not quiet and in_window():
                arm.flooder_tokens += 1
            first = False
        if pacer is not None:
            now = time.monotonic()
            # As in the pool: the flooder's (paced) holding times set the turnover floor.
            pacer.completed(now, 0.0 if quiet else now - sent, arm.flooder_slots)
            pacer.returned(now, turns)  # the quiet request's turn, as in the pool
        if not quiet:
            holding -= 1
        completion.set()

    def spawn(request: SimRequest, quiet: bool, turns: float = 0.0) -> None:
        task = asyncio.create_task(stream(request, quiet, turns))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def submit(priority: int) -> SimRequest:
        if arm.announce and arm.isolate is not None:
            # As Fairlane does at admission; the engine's API delay is the lead it gets.
            engine.announce(priority)
        return engine.submit(args.prompt_tokens, args.max_tokens, priority)

    async def quiet() -> None:
        start = time.monotonic()
        for at in poisson_arrivals(
            args.quiet_rps, args.warmup + args.duration, tenant_rng(args.seed, 0)
        ):
            await asyncio.sleep(max(0.0, start + at - time.monotonic()))
            # As in the pool, a quiet admission takes a turn until its answer ends.
            turns = pacer.admitted(time.monotonic(), paced=False) if pacer is not None else 0.0
            spawn(submit(QUIET_PRIORITY), True, turns)

    async def flooder() -> None:
        nonlocal holding
        while True:
            # As the pool does: a slot must be free and the pacer's turn come; both are
            # looked at again on every completion.
            while True:
                delay = pacer.delay(time.monotonic()) if pacer is not None else 0.0
                slot_free = holding < arm.flooder_slots
                if slot_free and delay <= 0:
                    break
                completion.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(completion.wait(), delay if slot_free else None)
            if pacer is not None:
                pacer.admitted(time.monotonic())
            holding += 1
            spawn(submit(FLOODER_PRIORITY), False)

    flooding = asyncio.create_task(flooder()) if arm.flooder_slots else None
    await quiet()
    await asyncio.sleep(max(0.0, window_end - time.monotonic()))
    if flooding is not None:
        flooding.cancel()
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await engine.stop()


def arms(args: argparse.Namespace) -> list[Arm]:
    """Per token budget: solo, then held and a paced arm per pacing factor, each with and
    without prefill isolation as asked."""
    preset = PRESETS[args.preset]
    slots = preset.max_num_seqs - reserved_slots(preset.max_num_seqs, args.headroom)
    budgets = args.max_num_batched_tokens or [preset.max_num_batched_tokens]
    isolations: list[Isolation | None] = [
        None if choice == "off" else "prompts" if choice == "on" else choice
        for choice in args.isolate_prefills
    ]
    variants = [
        (isolate, announce == "on")
        for isolate in isolations
        for announce in (args.announce if isolate is not None else ["off"])
    ]
    return [
        arm
        for budget in budgets
        for arm in (
            Arm("solo", budget, 0),
            *(
                flooded
                for isolate, announce in variants
                for flooded in (
                    Arm("held", budget, slots, isolate=isolate, announce=announce),
                    *(
                        Arm(
                            f"paced-{factor:g}",
                            budget,
                            slots,
                            pacing=factor,
                            isolate=isolate,
                            announce=announce,
                        )
                        for factor in args.pace
                    ),
                )
            ),
        )
    ]


def run(args: argparse.Namespace) -> int:
    done: list[Arm] = []
    for arm in arms(args):
        print(
            f"arm {arm.name} at {arm.budget} tokens/step: "
            f"{args.warmup:.0f}s warm-up + {args.duration:.0f}s",
            flush=True,
        )
        asyncio.run(measure(arm, args))
        done.append(arm)
    solo, held = done[0], done[1]  # the first budget's: the engine as configured
    solo_p99 = summarize(solo.ttfts, scale=1000)["p99"]
    results = [arm.result(args.duration, solo_p99, held) for arm in done]
    rows = [
        [
            r["arm"],
            str(r["max_num_batched_tokens"]),
            fmt(r["pacing"], 2),
            r["isolate_prefills"] or "-",
            {True: "yes", False: "no", None: "-"}[r["announced"]],
            fmt(r["quiet_ttft_ms"]["p50"], 0),
            fmt(r["quiet_ttft_ms"]["p99"], 0),
            fmt(r["quiet_p99_x_solo"], 2),
            fmt(r["flooder_tokens_per_s"], 0),
            fmt(r["flooder_x_held"], 3),
            str(r["quiet_ttft_ms"]["count"]),
        ]
        for r in results
    ]
    headers = ["arm", "tokens/step", "pacing", "isolated", "announced"]
    headers += ["quiet TTFT p50 ms", "quiet TTFT p99 ms"]
    headers += ["quiet p99 x solo", "flooder tok/s", "flooder x held", "quiet requests"]
    print(table(headers, rows))
    path = write_json(
        args.output,
        {
            "benchmark": "engine-floor",
            "machine": machine(),
            "config": config_of(args),
            "arms": results,
        },
    )
    print(f"wrote {path}")
    return 0
