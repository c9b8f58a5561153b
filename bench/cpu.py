"""CPU time from /proc: per process, for the whole machine; and the process tree (children,
descendants, alive, argv, process groups) that benchmarks and tests look up."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path


def _stat(pid: int | str) -> list[str] | None:
    """/proc/PID/stat after the command name: [state, ppid, pgrp, ...] (field 3 of
    proc(5) onwards); None if the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds; 0.0 if it is gone."""
    fields = _stat(pid)
    if fields is None:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs spent busy since boot (/proc/stat: user, nice, system, irq,
    softirq; not idle, iowait or steal)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq = (int(f) for f in fields[:7])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSnapshot:
    """CPU time of named processes, of this process and of the whole machine."""

    wall: float
    machine: float
    own: float
    processes: dict[str, float]

    @staticmethod
    def take(pids: dict[str, int]) -> CpuSnapshot:
        return CpuSnapshot(
            time.monotonic(),
            machine_busy_seconds(),
            time.process_time(),
            {role: cpu_seconds(pid) for role, pid in pids.items()},
        )

    def since(self, before: CpuSnapshot) -> dict[str, float]:
        """CPU seconds per role (``loadgen`` = this process), ``background`` (the machine's
        busy time spent in none of them: other work on the box) and ``wall``."""
        used = {role: t - before.processes.get(role, t) for role, t in self.processes.items()}
        used["loadgen"] = self.own - before.own
        used["background"] = max(0.0, self.machine - before.machine - sum(used.values()))
        used["wall"] = self.wall - before.wall
        return used


def children(pid: int) -> list[int]:
    """Direct children of a process, from /proc/PID/task/*/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def descendants(pid: int) -> set[int]:
    """Every process below ``pid``: its children, theirs, and so on."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        for child in children(todo.pop()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie."""
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z"


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def running_descendants(root: int) -> dict[int, list[str]]:
    """The argv of every running process below ``root`` (zombies and processes gone
    since they were listed left out)."""
    return {pid: argv for pid in descendants(root) if alive(pid) and (argv := cmdline(pid))}


def process_group(pgid: int) -> list[int]:
    """The running members of a process group (``kill -- -PGID`` reaches these)."""
    members = []
    for entry in os.listdir("/proc"):
        fields = _stat(entry) if entry.isdigit() else None
        if fields is not None and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry))
    return members
