"""The load benchmark's numbers: per-step summaries, the saturation point, the checks,
the table and the chart."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fairlane.bench.records import RequestRecord, RunResult
from fairlane.bench.report import table
from fairlane.bench.stats import fmt, lag_ok, per_unit, summarize

THROUGHPUT_GAIN = 1.10  # a step must beat the best step before it by 10 % to still scale
TTFT_JUMP = 3.0  # ... and keep its TTFT p99 under 3x the previous step's
REFUSED = ("429+retry-after", "503+retry-after")
ERROR_KINDS = (*REFUSED, "429 no retry-after", "503 no retry-after", "timeout", "other")
STACK_ROLES = ("worker", "envoy", "engine", "serve")


@dataclass(slots=True)
class LoadRecord(RequestRecord):
    retry_after: str | None = None  # the Retry-After header of an error answer


def error_kind(record: RequestRecord) -> str | None:
    """None for a success, else one of ERROR_KINDS."""
    if record.ok:
        return None
    if record.status in (429, 503):
        with_header = isinstance(record, LoadRecord) and record.retry_after is not None
        return f"{record.status}{'+' if with_header else ' no '}retry-after"
    if record.status == 0 and record.error and "Timeout" in record.error.split(":", 1)[0]:
        return "timeout"
    return "other"


def summarize_step(
    concurrency: int,
    result: RunResult,
    cpu: dict[str, float],
    idle: dict[str, float],
    gauges: list[dict[str, float]],
) -> dict[str, Any]:
    """One step: throughput and TTFT inside the window; errors, CPU per request and the
    gauges over the whole step (warm-up and drain included)."""
    issued = result.records
    ok = [r for r in result.measured() if r.ok]
    ttft = summarize([r.ttft for r in ok if r.ttft is not None], 1000.0)
    errors = Counter(kind for r in issued if (kind := error_kind(r)) is not None)
    errors["timeout"] += result.unfinished  # cancelled at the drain deadline
    examples = sorted({r.error or "" for r in issued if error_kind(r) not in (None, *REFUSED)})
    wall = cpu["wall"]
    cpu_ms = {
        role: per_unit((cpu[role] - idle.get(role, 0.0) * wall) * 1000.0, len(issued))
        for role in STACK_ROLES
        if role in cpu
    }
    cpu_ms["loadgen"] = per_unit(cpu["loadgen"] * 1000.0, len(issued))
    lag = summarize(result.lag_s, 1000.0)
    return {
        "concurrency": concurrency,
        "requests": len(issued),
        "completed_rps": len(result.completed()) / result.seconds,
        "output_tok_s": sum(result.window_tokens.values()) / result.seconds,
        "ttft_ms": ttft,
        "latency_ms": summarize([r.end - r.sent for r in ok], 1000.0),
        "errors": {kind: errors.get(kind, 0) for kind in ERROR_KINDS},
        "error_rate": per_unit(sum(errors.values()), len(issued) + result.unfinished),
        "error_examples": [e[:160] for e in examples[:5]],
        "cpu_ms_per_request": cpu_ms,
        "cores": {role: used / wall for role, used in cpu.items() if role != "wall"},
        "inflight": _gauge(gauges, "fairlane_inflight"),
        "queued": _gauge(gauges, "fairlane_queue_depth"),
        "loadgen_lag_ms": lag,
        "lag_ok": lag_ok(lag["p99"], ttft["p50"]),
        "unfinished": result.unfinished,
    }


def _gauge(samples: list[dict[str, float]], name: str) -> dict[str, float | None]:
    values = [s[name] for s in samples]
    if not values:
        return {"mean": None, "max": None}
    return {"mean": sum(values) / len(values), "max": max(values)}


def find_saturation(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Two knees. Throughput: the first step that adds less than THROUGHPUT_GAIN over the
    best step before it; the saturation point is the step before it (the last one that
    still scaled). Latency: the first step whose TTFT p99 exceeds TTFT_JUMP x the previous
    step's; ``ttft_knee`` is the step before it."""
    found: dict[str, Any] = {
        "concurrency": None,
        "reason": "throughput grew at every step",
        "ttft_knee": None,
        "ttft_reason": "no jump",
    }
    best = 0.0
    for index, step in enumerate(steps):
        if index:
            previous, c = steps[index - 1], step["concurrency"]
            rps, p99, before = (
                step["completed_rps"],
                step["ttft_ms"]["p99"],
                previous["ttft_ms"]["p99"],
            )
            if found["concurrency"] is None and rps < THROUGHPUT_GAIN * best:
                found["concurrency"] = previous["concurrency"]
                found["reason"] = (
                    f"at C={c}: {100 * (rps / best - 1):+.0f}% req/s vs the best before"
                )
            if found["ttft_knee"] is None and p99 and before and p99 > TTFT_JUMP * before:
                found["ttft_knee"] = previous["concurrency"]
                found["ttft_reason"] = f"at C={c}: TTFT p99 x{p99 / before:.1f}"
        best = max(best, step["completed_rps"])
    return found


def assess(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """The saturation point and the checks on errors, per step: none at or below the
    throughput saturation point, only refusals with Retry-After above it."""
    saturation = find_saturation(steps)
    limit = saturation["concurrency"]
    checks = []
    for step in steps:
        errors = step["errors"]
        below = limit is None or step["concurrency"] <= limit
        if below:
            ok = sum(errors.values()) == 0
            rule = "no error at or below saturation"
        else:
            ok = all(n == 0 for kind, n in errors.items() if kind not in REFUSED)
            rule = "above saturation only 429/503 with Retry-After, no timeout"
        found = ", ".join(f"{n} {kind}" for kind, n in errors.items() if n) or "no errors"
        checks.append({"concurrency": step["concurrency"], "ok": ok, "rule": rule, "found": found})
    return {
        "saturation": saturation,
        "checks": checks,
        "passed": all(c["ok"] for c in checks),
    }


def render(document: dict[str, Any], png: Path) -> str:
    """The table, the saturation point and the checks as text; the chart into ``png``."""
    steps = document["steps"]
    rows = []
    for s in steps:
        cpu, cores, e = s["cpu_ms_per_request"], s["cores"], s["errors"]
        errors = " ".join(f"{kind}:{n}" for kind, n in e.items() if n) or "0"
        rows.append(
            [
                str(s["concurrency"]),
                str(s["requests"]),
                fmt(s["completed_rps"], 1),
                fmt(s["output_tok_s"], 0),
                fmt(s["ttft_ms"]["p50"], 0),
                fmt(s["ttft_ms"]["p99"], 0),
                f"{fmt(s['inflight']['mean'], 0)}/{fmt(s['queued']['mean'], 0)}",
                errors,
                fmt(cpu.get("worker"), 2),
                fmt(cpu.get("envoy"), 2),
                fmt(cpu.get("engine"), 2),
                "/".join(fmt(cores.get(r), 2) for r in ("engine", "envoy", "worker", "loadgen")),
                fmt(cores.get("background"), 2),
                fmt(s["loadgen_lag_ms"]["p99"], 1) + ("" if s["lag_ok"] else " (LAG!)"),
            ]
        )
    headers = [
        "C", "requests", "req/s", "tok/s", "TTFT p50 ms", "TTFT p99 ms",
        "in flight/queued", "errors", "worker CPU ms/req", "Envoy CPU ms/req",
        "engine CPU ms/req", "cores engine/Envoy/worker/loadgen", "other cores",
        "lag p99 ms",
    ]  # fmt: skip
    sat = document["saturation"]
    lines = [
        table(headers, rows),
        f"saturation (throughput stops growing): C={sat['concurrency']} ({sat['reason']}); "
        f"TTFT p99 jumps after C={sat['ttft_knee']} ({sat['ttft_reason']})",
        *(
            f"{'PASS' if c['ok'] else 'FAIL'}: C={c['concurrency']}: {c['rule']} ({c['found']})"
            for c in document["checks"]
        ),
        f"machine load (1/5/15 min): {document['machine']['loadavg_at_start']} at start, "
        f"{document['machine']['loadavg_at_end']} at end",
    ]
    if not all(s["lag_ok"] for s in steps):
        lines.append("WARNING: load-generator lag p99 above 10% of TTFT p50 (LAG!)")
    _chart(steps, sat["concurrency"], sat["ttft_knee"], png)
    return "\n".join(lines)


def _chart(
    steps: list[dict[str, Any]], saturation: int | None, ttft_knee: int | None, png: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = [s["concurrency"] for s in steps]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(c, [s["completed_rps"] for s in steps], "o-", color="tab:blue")
    left.set_ylabel("completed requests/s", color="tab:blue")
    tokens = left.twinx()
    tokens.plot(c, [s["output_tok_s"] for s in steps], "s--", color="tab:orange")
    tokens.set_ylabel("output tokens/s", color="tab:orange")
    left.set_title("Throughput")
    for quantile, style in (("p50", "o--"), ("p99", "o-")):
        values = [s["ttft_ms"][quantile] for s in steps]
        right.plot(c, [v if v is not None else float("nan") for v in values], style)
    right.legend(["TTFT p50", "TTFT p99"])
    right.set_yscale("log")
    right.set_ylabel("ms (log)")
    right.set_title("Time to first token")
    for axis, knee in ((left, saturation), (right, ttft_knee)):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrency (closed loop; dotted: knee)")
        if knee is not None:
            axis.axvline(knee, color="grey", linestyle=":")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
