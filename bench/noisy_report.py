"""The noisy-neighbour benchmark's numbers: per-arm summaries, ratios, tables, chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fairlane.bench.engine_watch import announcements_heard
from fairlane.bench.records import RequestRecord, RunResult
from fairlane.bench.report import table
from fairlane.bench.stats import fmt, goodput, lag_ok, ratio, summarize
from fairlane.engine_config import EngineConfig

ARMS = ("solo", "fifo", "token-bucket", "fair")
FLOODER = "flooder"
PINNED = "flooder-pinned"  # spread arm: sends to the first gateway only
SPREAD = "flooder-spread"  # spread arm: sends to every gateway in turn
QUIET_P99_TARGET = 1.10  # fair: quiet p99 at most this times solo
GOODPUT_TARGET = 0.95  # fair: flooder goodput at least this times fifo
DEFAULT_HEADROOM: float = EngineConfig.model_fields["headroom"].default  # the bench sets none


def _ttft_ms(records: list[RequestRecord]) -> dict[str, float | int | None]:
    return summarize([r.ttft for r in records if r.ok and r.ttft is not None], 1000.0)


def _slowest(records: list[RequestRecord], start: float, count: int = 10) -> list[Any]:
    """The tail itself: the slowest requests' tenant, send time (s into the measured
    window) and TTFT (ms), slowest first, to tell a wave or a stall from a spread."""
    timed = sorted(
        (r for r in records if r.ok and r.ttft is not None),
        key=lambda r: r.ttft or 0.0,
        reverse=True,
    )
    return [
        [r.tenant, round(r.sent - start, 2), round((r.ttft or 0.0) * 1000.0, 1)]
        for r in timed[:count]
    ]


def summarize_arm(
    arm: str,
    result: RunResult,
    quiet: list[str],
    solo: dict[str, Any] | None,
) -> dict[str, Any]:
    measured = result.measured()
    quiet_records = [r for r in measured if r.tenant != FLOODER]
    tenants: dict[str, Any] = {}
    for name in quiet:
        mine = [r for r in quiet_records if r.tenant == name]
        ttft = _ttft_ms(mine)
        base = solo["quiet_tenants"][name]["ttft_ms"]["p99"] if solo else ttft["p99"]
        tenants[name] = {
            "ttft_ms": ttft,
            "failed": sum(not r.ok for r in mine),
            "p99_vs_solo": ratio(ttft["p99"], base),
        }
    pooled = _ttft_ms(quiet_records)
    flooder = _flood(result, FLOODER) if arm != "solo" else None
    lag = summarize(result.lag_s, 1000.0)
    reference = solo["quiet"]["ttft_ms"]["p50"] if solo else pooled["p50"]
    return {
        "quiet": {
            "ttft_ms": pooled,
            "requests": len(quiet_records),
            "failed": sum(not r.ok for r in quiet_records),
            "slowest": _slowest(quiet_records, result.window[0]),
        },
        "quiet_tenants": tenants,
        "flooder": flooder,
        "completed_rps": len(result.completed()) / result.seconds,
        "loadgen_lag_ms": lag,
        "send_lag_ms": summarize(result.send_lag_s, 1000.0),
        "lag_ok": lag_ok(lag["p99"], reference),
        "unfinished": result.unfinished,
    }


def _flood(result: RunResult, tenant: str) -> dict[str, Any]:
    """A flooding tenant's goodput, completions and refusals inside the window."""
    mine = result.measured(tenant)
    return {
        "requests": len(mine),
        "goodput_tok_s": goodput(result.window_tokens.get(tenant, 0), result.seconds),
        "completed_rps": len(result.completed(tenant)) / result.seconds,
        "status_429": sum(r.status == 429 for r in mine),
        "status_503": sum(r.status == 503 for r in mine),
        "other_errors": sum(not r.ok and r.status not in (429, 503) for r in mine),
        "ttft_ms": _ttft_ms(mine),
    }


def expected_spread_ratio(gateways: int, shared: bool, headroom: float) -> float:
    """spread / pinned goodput when both flood every gateway they use and each gateway
    has 1/N of the engine's slots.

    Local state: gateway 1 splits its slots evenly, the spreader also has all of the
    N-1 others: (N - 1/2) / (1/2) = 2N - 1. Shared counters: gateway 1 gives its slots
    to the pinned flooder (the spreader's global service is larger, so it never ranks
    first there), except its ``headroom`` fraction, which neither may take: the pinned
    flooder holds more than its share of gateway 1's slots and the spreader is not
    first; the N-1 other gateways serve only the spreader (alone there, it gets all of
    them): (N - 1) / (1 - h), 1.0 for N = 2 without headroom."""
    if not shared:
        return 2.0 * gateways - 1.0
    return (gateways - 1.0) / (1.0 - headroom)


def summarize_spread(
    result: RunResult, gateways: int, shared: bool, headroom: float
) -> dict[str, Any]:
    """The spread arm: both flooders, and the spreader's goodput over the pinned one's."""
    tenants = {name: _flood(result, name) for name in (PINNED, SPREAD)}
    return {
        "state": "redis" if shared else "local",
        "gateways": gateways,
        "headroom": headroom,
        "tenants": tenants,
        "goodput_ratio": ratio(tenants[SPREAD]["goodput_tok_s"], tenants[PINNED]["goodput_tok_s"]),
        "loadgen_lag_ms": summarize(result.lag_s, 1000.0),
        "unfinished": result.unfinished,
    }


def ratios(summary: dict[str, Any], arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    solo, fifo = arms.get("solo"), arms.get("fifo")
    flooder = summary["flooder"]
    return {
        "quiet_p99_vs_solo": (
            ratio(summary["quiet"]["ttft_ms"]["p99"], solo["quiet"]["ttft_ms"]["p99"])
            if solo
            else None
        ),
        "worst_quiet_p99_vs_solo": max(
            (t["p99_vs_solo"] for t in summary["quiet_tenants"].values() if t["p99_vs_solo"]),
            default=None,
        ),
        "flooder_goodput_vs_fifo": (
            ratio(flooder["goodput_tok_s"], fifo["flooder"]["goodput_tok_s"])
            if fifo and flooder
            else None
        ),
    }


def render(document: dict[str, Any], png: Path) -> tuple[str, bool]:
    """The tables, the verdict on the targets, and the chart; also whether every arm's
    load-generator lag was small enough for its numbers to count."""
    arms: dict[str, dict[str, Any]] = document["arms"]
    gateways = gateways_label(document)
    rows = []
    for arm, s in arms.items():
        f = s["flooder"] or {}
        rows.append(
            [
                arm,
                gateways,
                fmt(s["ratios"]["quiet_p99_vs_solo"], 2),
                fmt(s["ratios"]["worst_quiet_p99_vs_solo"], 2),
                fmt(s["ratios"]["flooder_goodput_vs_fifo"], 3),
                fmt(s["quiet"]["ttft_ms"]["p50"], 0),
                fmt(s["quiet"]["ttft_ms"]["p99"], 0),
                f"{s['quiet']['failed']}/{s['quiet']['requests']}",
                fmt(f.get("goodput_tok_s"), 0),
                str(f.get("status_429", "-")),
                str(f.get("status_503", "-")),
                fmt(s["engine"]["max_waiting"], 0),
                fmt(s["loadgen_lag_ms"]["p99"], 1) + ("" if s["lag_ok"] else " (LAG!)"),
                fmt(s["cpu_cores"]["background"], 2),
            ]
        )
    headers = [
        "arm", "gateways", "quiet p99 x solo", "worst quiet p99 x solo",
        "flooder goodput x fifo", "quiet TTFT p50 ms", "quiet TTFT p99 ms", "quiet failed",
        "flooder tok/s", "flooder 429", "flooder 503", "engine max waiting", "lag p99 ms",
        "bg cores",
    ]  # fmt: skip
    parts = [table(headers, rows), _tenant_table(arms)] if arms else []
    parts += announcements_heard(arms)
    parts += _verdicts(arms)
    if "spread" in document:
        parts.append(_spread_table(document["spread"]))
    if arms:  # a spread-only run has nothing to chart
        _chart(arms, png)
    valid = all(s["lag_ok"] for s in arms.values())
    if not valid:
        parts.append("WARNING: load-generator lag p99 above 10% of solo TTFT p50 (LAG!)")
    return "\n\n".join(parts), valid


def gateways_label(document: dict[str, Any]) -> str:
    """``1``, or ``N redis`` / ``N local`` (where tenant state lived); files from before
    --gateways existed were one gateway."""
    gateways = document.get("gateways", 1)
    return str(gateways) if gateways == 1 else f"{gateways} {document['state']}"


def _spread_table(spread: dict[str, Any]) -> str:
    pinned, spreader = (spread["tenants"][name] for name in (PINNED, SPREAD))
    waits = spread["queue_wait_ms_mean"]
    headroom = spread.get("headroom", DEFAULT_HEADROOM)  # not recorded by the first runs
    expected = expected_spread_ratio(spread["gateways"], spread["state"] == "redis", headroom)
    row = [
        f"{spread['gateways']} {spread['state']}",
        fmt(spread["goodput_ratio"], 2),
        fmt(expected, 2),
        fmt(pinned["goodput_tok_s"], 0),
        fmt(spreader["goodput_tok_s"], 0),
        f"{pinned['status_429']}/{pinned['status_503']}",
        f"{spreader['status_429']}/{spreader['status_503']}",
        fmt(waits.get(PINNED), 0),
        fmt(waits.get(SPREAD), 0),
        fmt(spread["engine"]["mean_running"], 0),
        fmt(spread["engine"]["max_waiting"], 0),
        fmt(spread["loadgen_lag_ms"]["p99"], 1),
        fmt(spread["cpu_cores"]["background"], 2),
    ]
    headers = [
        "spread arm", "goodput spread / pinned", "expected", "pinned tok/s", "spread tok/s",
        "pinned 429/503", "spread 429/503", "pinned queue wait ms", "spread queue wait ms",
        "engine mean running", "engine max waiting", "lag p99 ms", "bg cores",
    ]  # fmt: skip
    return table(headers, [row])


def _tenant_table(arms: dict[str, dict[str, Any]]) -> str:
    rows = []
    for arm, s in arms.items():
        waits = s["queue_wait_ms_mean"]
        tenants = [
            (name, t["ttft_ms"], t["failed"], t["p99_vs_solo"])
            for name, t in s["quiet_tenants"].items()
        ]
        if s["flooder"]:
            ttft = s["flooder"]["ttft_ms"]
            tenants.append((FLOODER, ttft, s["flooder"]["requests"] - ttft["count"], None))
        for name, ttft, failed, vs_solo in tenants:
            rows.append(
                [
                    arm,
                    name,
                    fmt(vs_solo, 2),
                    fmt(ttft["p50"], 0),
                    fmt(ttft["p99"], 0),
                    str(ttft["count"]),
                    str(failed),
                    fmt(waits.get(name), 0),
                ]
            )
    headers = [
        "arm", "tenant", "p99 x solo", "TTFT p50 ms", "TTFT p99 ms", "ok", "failed",
        "Fairlane queue wait mean ms",
    ]  # fmt: skip
    return table(headers, rows)


def _verdicts(arms: dict[str, dict[str, Any]]) -> list[str]:
    fair = arms.get("fair")
    if fair is None or "solo" not in arms or "fifo" not in arms:
        return []
    quiet = fair["ratios"]["quiet_p99_vs_solo"]
    flood = fair["ratios"]["flooder_goodput_vs_fifo"]
    ok_quiet = quiet is not None and quiet <= QUIET_P99_TARGET
    ok_flood = flood is not None and flood >= GOODPUT_TARGET
    return [
        f"{'PASS' if ok_quiet else 'FAIL'}: fair keeps quiet p99 at {fmt(quiet, 2)}x solo "
        f"(target <= {QUIET_P99_TARGET})",
        f"{'PASS' if ok_flood else 'FAIL'}: fair keeps flooder goodput at {fmt(flood, 3)}x "
        f"fifo (target >= {GOODPUT_TARGET})",
    ]


def _chart(arms: dict[str, dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(arms)
    p99 = [arms[a]["quiet"]["ttft_ms"]["p99"] or 0.0 for a in names]
    flooded = [a for a in names if arms[a]["flooder"]]
    flood = [arms[a]["flooder"]["goodput_tok_s"] for a in flooded]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.bar(names, p99, color="tab:blue")
    left.set_yscale("log")
    left.set_ylabel("quiet tenants' TTFT p99 (ms, log)")
    left.set_title("Quiet tenants: TTFT p99")
    for x, value in enumerate(p99):
        left.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom")
    right.bar(flooded, flood, color="tab:orange")
    right.set_ylabel("flooder goodput (tokens/s)")
    right.set_title("Flooder: completed output tokens/s")
    for x, value in enumerate(flood):
        right.annotate(f"{value:.0f}", (x, value), ha="center", va="bottom")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
