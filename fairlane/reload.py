"""Watch the policy file and reload it: on change (rename-into-place or in-place edit),
on demand (SIGHUP: reload even if unchanged), and when told to look now (SIGUSR1 from
``fairlane serve``: reload if changed). A bad file keeps the old policy; the caller
counts it. The listener section is Envoy's and applies on restart only, so a reload is
also refused where it relies on a listener other than the running one."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from pathlib import Path

from fairlane.engine_keys import engine_keys
from fairlane.policy import ListenerConfig, Policy
from fairlane.policy_checks import queue_timeout_problems
from fairlane.policy_file import PolicyError, load_policy

log = logging.getLogger(__name__)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class PolicyWatcher:
    def __init__(
        self,
        path: Path,
        running_listener: ListenerConfig,
        on_policy: Callable[[Policy], None],
        on_error: Callable[[PolicyError], None],
        interval_s: float = 1.0,
    ) -> None:
        self._path = path
        self._listener = running_listener
        self._on_policy = on_policy
        self._on_error = on_error
        self._interval = interval_s
        self._signature = file_signature(path)
        self._wake = asyncio.Event()
        self._forced = False

    def request_reload(self) -> None:
        """Reload now, changed or not. Safe from a loop signal handler: it sets flags."""
        self._forced = True
        self._wake.set()

    def request_check(self) -> None:
        """Look at the file now rather than at the next poll; reload if it changed."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            forced, self._forced = self._forced, False
            self._wake.clear()
            signature = file_signature(self._path)
            if not forced and signature == self._signature:
                continue
            self._signature = signature
            self.reload_now()

    def reload_now(self) -> None:
        try:
            policy = load_policy(self._path)
            engine_keys(policy, os.environ)  # an engine's key must be there to use it
            self._check_against_running_listener(policy)
        except PolicyError as exc:
            for problem in exc.problems:
                log.error("policy reload refused, keeping the running policy: %s", problem)
            self._on_error(exc)
            return
        self._on_policy(policy)

    def _check_against_running_listener(self, policy: Policy) -> None:
        idle = self._listener.stream_idle_timeout_s
        problems = queue_timeout_problems(
            policy, idle, "the running listener.stream_idle_timeout_s"
        )
        if problems:
            raise PolicyError(
                [
                    f"{self._path} {'.'.join(key)}: {message} "
                    "(a new listener section applies on restart)"
                    for key, message in problems
                ]
            )
