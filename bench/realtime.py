"""Run a benchmark's measuring thread under SCHED_FIFO: on a shared 2-core box its own
scheduling delays would otherwise show up as the servers' latency."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator


def add_realtime_argument(parser: argparse.ArgumentParser, who: str = "the load generator") -> None:
    """``--realtime/--no-realtime``, the switch for ``realtime()`` every benchmark has."""
    parser.add_argument(
        "--realtime",
        action=argparse.BooleanOptionalAction,
        default=True,
        help=f"run {who} under SCHED_FIFO 10 (chrt -f 10) when permitted",
    )


@contextlib.contextmanager
def realtime(enabled: bool, priority: int = 10) -> Iterator[bool]:
    """Run the calling thread under SCHED_FIFO (like ``chrt -f 10``) inside the block.

    Yields whether it took effect (it needs root or CAP_SYS_NICE). Start servers outside
    the block: child processes inherit the policy.
    """
    if not enabled:
        yield False
        return
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except OSError:
        yield False
        return
    try:
        yield True
    finally:
        os.sched_setscheduler(0, policy, param)
