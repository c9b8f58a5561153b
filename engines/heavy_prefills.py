"""A cap on the prompt tokens one step prefills of a worse priority level than the best
that has arrived lately (``heavy_prefill_tokens``), for the isolated-prefill schedulers.

Isolated prefills give a light tenant's prompt a step without the prompts of a tenant
over its share, and announcements keep those from starting while it is on its way; what
it can still meet is the flooder's prefill step in progress when it arrives, as long as
the engine's whole token budget. This cap keeps such steps short while a better level is
about, without shrinking the budget of the light prompts themselves (two sent together
still share a step) or of a tenant that has the engine to itself: it applies only while a
request of a better level has arrived in the last ``RECENT_S`` seconds.
"""

from __future__ import annotations

import os

# How long a level counts as about after its last arrival: Fairlane's default
# `linger_s`, for which a tenant stays active between short requests.
RECENT_S = 30.0
# Where the supervisor tells a managed vLLM running Fairlane's scheduler the cap.
CAP_ENV = "FAIRLANE_HEAVY_PREFILL_TOKENS"


class RecentLevels:
    """The priority levels of the requests that arrived in the last ``RECENT_S`` seconds:
    as many as the levels seen in that window (Fairlane gives two per priority class)."""

    def __init__(self, recent_s: float = RECENT_S) -> None:
        self._recent_s = recent_s
        self._last_seen: dict[int, float] = {}

    def saw(self, level: int, now: float) -> None:
        self._last_seen[level] = now

    def best(self, now: float) -> int | None:
        """The best (lowest) level seen lately; None when none was."""
        stale = [level for level, at in self._last_seen.items() if now - at > self._recent_s]
        for level in stale:
            del self._last_seen[level]
        return min(self._last_seen, default=None)


class HeavyAllowance:
    """One step's allowance of prompt tokens for levels worse than ``best`` (the
    simulator's exact count)."""

    def __init__(self, cap: int | None, best: int | None) -> None:
        self._left = cap if best is not None else None
        self._best = best

    def take(self, level: int, prefilling: bool, tokens: int) -> int:
        """How many of a request's ``tokens`` to compute this step: all of them unless
        they are prompt tokens of a worse level, which share what is left of the cap."""
        if self._left is None or not prefilling:
            return tokens
        assert self._best is not None
        if level <= self._best:
            return tokens
        tokens = min(tokens, self._left)
        self._left -= tokens
        return tokens


def cap_from_env() -> int | None:
    """The cap the supervisor set for this engine process; None: none (or not a positive
    whole number, which the policy's schema rules out)."""
    value = os.environ.get(CAP_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else None


def heavy_step_budget(
    budget: int, cap: int | None, pending: int | None, recent_best: int | None, decodes: int
) -> int | None:
    """For vLLM, whose scheduler has one budget for a step: the budget of a step whose
    best pending prompt is of level ``pending``, if that is worse than ``recent_best``
    (then every prompt the step may run is): its ``decodes`` (the tokens the running
    decodes take) plus the cap. None: the cap does not apply."""
    if cap is None or pending is None or recent_best is None or pending <= recent_best:
        return None
    return min(budget, decodes + cap)
