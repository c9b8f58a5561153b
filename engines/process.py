"""One child process: start it in its own process group, stop it (TERM, then KILL),
and restart it with exponential backoff until it crash-loops; then give up on it, or
(``loop_retry_s``) try again at that interval until it is healthy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import deque
from pathlib import Path

log = logging.getLogger(__name__)

AUTOGROUP_ATTEMPTS = 20  # a tenth of a second apart: see lower_cpu_priority


class ManagedProcess:
    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        *,
        max_crashes: int = 5,
        crash_window_s: float = 300.0,
        max_backoff_s: float = 30.0,
        loop_retry_s: float | None = None,
        nice: int = 0,
    ) -> None:
        self.name = name
        self.nice = nice
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.crash_looping = False
        self._crashes: deque[float] = deque(maxlen=max_crashes)
        self._crash_window = crash_window_s
        self._max_backoff = max_backoff_s
        self.loop_retry_s = loop_retry_s
        self._next_start = 0.0
        self._exit_noted = True

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **(self.env or {})}
        out = await asyncio.to_thread(open, self.log_path, "ab")
        with out:
            # Own session = own process group: stop() reaches the engine's children too.
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._exit_noted = False
        if self.nice:
            await lower_cpu_priority(self.process.pid, self.nice)
        log.info("%s started (pid %d): %s", self.name, self.process.pid, " ".join(self.argv))

    async def tend(self) -> None:
        """If the process exited by itself, count it and restart it once its backoff ends."""
        if self.process is None or self.running:
            return
        if not self._exit_noted:
            self._exit_noted = True
            # The leader died on its own; its children (vLLM's engine core, workers)
            # may not have: they would hold GPU memory the restarted engine needs.
            self._signal_group(self.process.pid, signal.SIGKILL)
            self.note_exit()
        await self.restart_when_due()

    def note_exit(self) -> None:
        """Record a crash and when the process may be restarted (never, if crash-looping
        and not to be retried)."""
        now = time.monotonic()
        self._crashes.append(now)
        code = self.process.returncode if self.process else None
        retry = self.loop_retry_s
        if self.crash_looping and retry is not None:  # a try after the loop failed too
            self._retry_loop(now, retry, f"{self.name} exited (code {code}) again")
            return
        if (
            len(self._crashes) == self._crashes.maxlen
            and now - self._crashes[0] < self._crash_window
        ):
            self.crash_looping = True
            looped = (
                f"{self.name} exited (code {code}) {len(self._crashes)} times"
                f" in {now - self._crashes[0]:.0f}s"
            )
            if retry is None:
                log.error("%s: not restarting", looped)
            else:
                self._retry_loop(now, retry, looped)
            return
        backoff = min(self._max_backoff, 0.5 * 2 ** (len(self._crashes) - 1))
        log.warning("%s exited (code %s); restarting in %.1fs", self.name, code, backoff)
        self._next_start = now + backoff

    def _retry_loop(self, now: float, retry_s: float, what: str) -> None:
        self._next_start = now + retry_s
        log.error("%s: crash loop; trying again in %.0fs or on a reload", what, retry_s)

    def healthy(self) -> None:
        """The process answered its health check: a crash loop it was in is over."""
        if self.crash_looping:
            log.info("%s is healthy again after its crash loop", self.name)
        self.crash_looping = False

    def rearm(self) -> None:
        """Forget a crash loop (its cause may be fixed): restart at the next ``tend``."""
        if self.crash_looping:
            self.crash_looping = False
            self._crashes.clear()
            self._next_start = 0.0
            log.info("%s: restarting it again after its crash loop", self.name)

    async def restart_when_due(self) -> None:
        given_up = self.crash_looping and self.loop_retry_s is None
        if given_up or self.running or time.monotonic() < self._next_start:
            return
        self.restarts += 1
        await self.start()

    async def stop(self, grace_s: float = 10.0) -> None:
        process = self.process
        self._exit_noted = True  # a stop we asked for is not a crash
        if process is None or process.returncode is not None:
            return
        self._signal_group(process.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await process.wait()
        except TimeoutError:
            log.warning("%s ignored SIGTERM for %.0fs: killing it", self.name, grace_s)
        # Whatever the leader did, no child of it may keep a port or GPU memory.
        self._signal_group(process.pid, signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5):
                await process.wait()

    def send_signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, sig)

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)


async def lower_cpu_priority(leader: int, nice: int) -> None:
    """Run the session ``leader`` heads (a process started by ManagedProcess.start) at
    ``nice``: every process now in its group, the ones it forks later (they inherit
    it), and the session's autogroup. With autogroup scheduling (on in most distribution
    and VM kernels) CPU time is shared between sessions first, and a nice value counts
    only within its session. Measured on 2 cores: vLLM-CPU at nice 0 in its own session
    kept Envoy and the worker off the CPU for 1-15 s (ext_proc timeouts, 503s); with
    its session at nice 10 the gateway's ext_proc calls took at most 10 ms. Best effort:
    without autogroups, or with a read-only /proc, the per-process nice stands alone."""
    try:
        os.setpriority(os.PRIO_PGRP, leader, nice)
    except OSError as exc:
        log.warning("could not set nice %d on process group %d: %s", nice, leader, exc)
    # The kernel takes one autogroup change a tenth of a second (EAGAIN otherwise),
    # across the whole machine.
    for _ in range(AUTOGROUP_ATTEMPTS):
        try:
            _write_autogroup_nice(leader, nice)
            return
        except BlockingIOError:
            await asyncio.sleep(0.1)
        except FileNotFoundError:
            return  # no autogroups in this kernel (or the engine already exited)
        except OSError as exc:
            log.warning("could not set the autogroup nice of pid %d: %s", leader, exc)
            return
    log.warning("could not set the autogroup nice of pid %d: the kernel kept refusing", leader)


def _write_autogroup_nice(pid: int, nice: int) -> None:
    with open(f"/proc/{pid}/autogroup", "w") as autogroup:
        autogroup.write(str(nice))
