"""One child process: start it in its own process group, stop it (TERM, then KILL),
and restart it with exponential backoff until it crash-loops."""

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
    ) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.process: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.crash_looping = False
        self._crashes: deque[float] = deque(maxlen=max_crashes)
        self._crash_window = crash_window_s
        self._max_backoff = max_backoff_s
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
        """Record a crash and when the process may be restarted (never, if crash-looping)."""
        now = time.monotonic()
        self._crashes.append(now)
        code = self.process.returncode if self.process else None
        if (
            len(self._crashes) == self._crashes.maxlen
            and now - self._crashes[0] < self._crash_window
        ):
            self.crash_looping = True
            log.error(
                "%s exited (code %s) %d times in %.0fs: not restarting",
                self.name,
                code,
                len(self._crashes),
                now - self._crashes[0],
            )
            return
        backoff = min(self._max_backoff, 0.5 * 2 ** (len(self._crashes) - 1))
        log.warning("%s exited (code %s); restarting in %.1fs", self.name, code, backoff)
        self._next_start = now + backoff

    async def restart_when_due(self) -> None:
        if self.crash_looping or self.running or time.monotonic() < self._next_start:
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
