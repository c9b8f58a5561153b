"""The soak benchmark's verdicts (memory, fds, threads, restarts, in-flight, lost requests),
its tables and its chart of RSS over time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fairlane.bench.report import table
from fairlane.bench.stats import fmt

if TYPE_CHECKING:
    from fairlane.bench.soak import SoakConfig

ROLES = ("serve", "worker", "envoy", "engine")
LABELS = {"serve": "supervisor", "worker": "worker", "envoy": "Envoy", "engine": "engine (sim)"}
WINDOW = 0.2  # the first and last 20 % of the samples after the warm-up are compared


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def process_trend(
    samples: list[dict[str, Any]], role: str, warmup_s: float, config: SoakConfig
) -> dict[str, Any]:
    """One process: its first and last windows after the warm-up, and the verdicts."""
    seen = [s["procs"][role] for s in samples if role in s["procs"]]
    steady = [s["procs"][role] for s in samples if s["t"] >= warmup_s and role in s["procs"]]
    pids = sorted({p["pid"] for p in seen})
    if len(steady) < 2:
        return {"pids": pids, "samples": len(steady), "ok": False, "problem": "too few samples"}
    n = max(1, round(WINDOW * len(steady)))
    first, last = steady[:n], steady[-n:]
    rss_first = _mean([p["rss_mib"] for p in first])
    rss_last = _mean([p["rss_mib"] for p in last])
    allowed = config.rss_tolerance * rss_first + config.rss_slack_mib
    fds = (max(p["fds"] for p in first), max(p["fds"] for p in last))
    threads = (max(p["threads"] for p in first), max(p["threads"] for p in last))
    verdicts = {
        "memory": rss_last - rss_first <= allowed,
        "fds": fds[1] <= fds[0] + config.fd_slack,
        "threads": threads[1] <= threads[0] + config.thread_slack,
        "not restarted": len(pids) == 1,
    }
    return {
        "pids": pids,
        "samples": len(steady),
        "window_samples": n,
        "rss_mib": {"first": rss_first, "last": rss_last, "growth": rss_last - rss_first},
        "rss_growth_allowed_mib": allowed,
        "rss_max_mib": max(p["rss_mib"] for p in seen),
        "fds": {"first_max": fds[0], "last_max": fds[1]},
        "threads": {"first_max": threads[0], "last_max": threads[1]},
        "verdicts": verdicts,
        "ok": all(verdicts.values()),
    }


def assess(document: dict[str, Any], config: SoakConfig) -> dict[str, Any]:
    """Per-process trends and every check, each with what it found."""
    warmup = document["config"]["warmup_s"]
    processes = {r: process_trend(document["samples"], r, warmup, config) for r in ROLES}
    checks = []
    for role, trend in processes.items():
        name = LABELS[role]
        if "verdicts" not in trend:
            checks.append({"check": f"{name}: sampled", "ok": False, "found": trend["problem"]})
            continue
        rss, fds, threads = trend["rss_mib"], trend["fds"], trend["threads"]
        found = {
            "memory": f"RSS {rss['first']:.1f} -> {rss['last']:.1f} MiB "
            f"({rss['growth']:+.1f}, allowed +{trend['rss_growth_allowed_mib']:.1f})",
            "fds": f"max {fds['first_max']} -> {fds['last_max']} (slack {config.fd_slack})",
            "threads": f"max {threads['first_max']} -> {threads['last_max']} "
            f"(slack {config.thread_slack})",
            "not restarted": f"PIDs {trend['pids']}",
        }
        for verdict, ok in trend["verdicts"].items():
            checks.append({"check": f"{name}: {verdict}", "ok": ok, "found": found[verdict]})
    settle = document["settle"]
    checks.append(
        {
            "check": "fairlane_inflight and queue back to 0",
            "ok": settle["ok"],
            "found": f"{settle['gauges']} after {settle['seconds']:.1f} s",
        }
    )
    traffic = document["traffic"]
    wrong = {
        f"{kind}: {outcome}": n
        for kind, k in traffic["kinds"].items()
        for outcome, n in k["outcomes"].items()
        if outcome not in ("ok", "expected error", "disconnected")
    }
    checks.append(
        {
            "check": "no lost requests",
            "ok": traffic["lost"] == 0,
            "found": f"sent {traffic['sent']}, answered {traffic['answered']}, "
            f"lost {traffic['lost']}" + (f": {wrong}" if wrong else ""),
        }
    )
    return {
        "processes": processes,
        "checks": checks,
        "passed": all(c["ok"] for c in checks),
    }


def render(document: dict[str, Any], png: Path) -> str:
    """Process and traffic tables and the checks as text; the RSS chart into ``png``."""
    rows = []
    for role, t in document["processes"].items():
        if "verdicts" not in t:
            rows.append([LABELS[role], str(t["pids"]), "-", "-", "-", "-", "FAIL"])
            continue
        rss = t["rss_mib"]
        rows.append(
            [
                LABELS[role],
                ",".join(map(str, t["pids"])),
                f"{rss['first']:.1f} -> {rss['last']:.1f}",
                f"{rss['growth']:+.1f} (<= {t['rss_growth_allowed_mib']:.1f})",
                f"{t['fds']['first_max']} -> {t['fds']['last_max']}",
                f"{t['threads']['first_max']} -> {t['threads']['last_max']}",
                "PASS" if t["ok"] else "FAIL",
            ]
        )
    procs = table(
        ["process", "PID", "RSS MiB first -> last 20%", "growth MiB (allowed)",
         "fds max", "threads max", "verdict"],
        rows,
    )  # fmt: skip
    traffic = document["traffic"]
    kinds = []
    for kind, k in traffic["kinds"].items():
        o = k["outcomes"]
        other = sum(n for name, n in o.items() if name not in ("ok", "expected error"))
        kinds.append(
            [kind, str(k["sent"]), str(o.get("ok", 0)), str(o.get("expected error", 0)),
             str(o.get("disconnected", 0)), str(other - o.get("disconnected", 0)), str(k["lost"])]
        )  # fmt: skip
    kinds.append(
        ["all", str(traffic["sent"]), "", "", "", "", str(traffic["lost"])]
    )  # fmt: skip
    mix = table(["kind", "sent", "ok", "expected error", "disconnected", "other", "lost"], kinds)
    info = document.get("machine", {})
    lines = [
        procs,
        mix,
        f"{traffic['sent']} requests in {traffic['seconds']:.0f} s "
        f"({fmt(traffic['requests_per_s'], 1)}/s); {len(document['samples'])} samples, "
        f"warm-up {document['config']['warmup_s']:.0f} s; "
        f"leases expired: {fmt(document['leases_expired'], 0)}",
        *(
            f"{'PASS' if c['ok'] else 'FAIL'}: {c['check']}: {c['found']}"
            for c in document["checks"]
        ),
    ]
    if info:
        lines.append(
            f"machine load (1/5/15 min): {info.get('loadavg_at_start')} at start, "
            f"{info.get('loadavg_at_end')} at end"
        )
    _chart(document, png)
    return "\n".join(lines)


def _chart(document: dict[str, Any], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = document["samples"]
    fig, (rss, fds) = plt.subplots(1, 2, figsize=(11, 4))
    for role in ROLES:
        points = [(s["t"], s["procs"][role]) for s in samples if role in s["procs"]]
        times = [t for t, _ in points]
        rss.plot(times, [p["rss_mib"] for _, p in points], label=LABELS[role])
        fds.plot(times, [p["fds"] for _, p in points], label=LABELS[role])
    for axis, label in ((rss, "RSS (MiB)"), (fds, "open file descriptors")):
        axis.axvspan(0, document["config"]["warmup_s"], color="grey", alpha=0.15)
        axis.set_xlabel("seconds (grey: warm-up, not checked)")
        axis.set_ylabel(label)
        axis.legend(fontsize="small")
    rss.set_title("Memory per process")
    fds.set_title("Open files per process")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
