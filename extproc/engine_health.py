"""Which engine replicas take requests: the supervisor's word, and a passive check.

The supervisor reports each engine's state (the worker follows ``engines.json``); a
replica that failed a request it never received meanwhile is taken out at once, for a
short while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from fairlane.engine_config import EngineConfig
from fairlane.extproc.admission import EnginePool
from fairlane.extproc.metrics import Metrics
from fairlane.extproc.replicas import EngineState

log = logging.getLogger(__name__)
QUARANTINE_S = 2.0


# The supervisor's words for an engine's state, kept as they are for /health and
# /status; any other counts as starting. Starting and idle queue their requests: for an
# idle lazy engine the queue is the demand that makes it load.
_STATES = {
    "up": EngineState.UP,
    "starting": EngineState.STARTING,
    "idle": EngineState.IDLE,
    "down": EngineState.DOWN,
    "restarting": EngineState.DOWN,
}


def reported_state(info: dict[str, Any], config: EngineConfig | None) -> EngineState:
    """An engine's state from the supervisor's report on it (an entry of engines.json),
    seen from the worker's policy. A process started for other model names than the
    policy's (a reload changed them and its restart is on the way, or the worker has
    yet to read the new file) is down: it would answer a name it does not serve 404."""
    serves = info.get("serves")
    if config is not None and serves is not None and set(serves) != set(config.served):
        return EngineState.DOWN
    return _STATES.get(info.get("state", ""), EngineState.STARTING)


class EngineHealth:
    def __init__(self, pool_of: Callable[[str], EnginePool | None], metrics: Metrics) -> None:
        self.states: dict[str, EngineState] = {}  # as the supervisor last said
        self._pool_of = pool_of  # the pool a replica is in now (a reload may move it)
        self._metrics = metrics

    def set_state(self, engine: str, state: EngineState) -> None:
        self.states[engine] = state
        pool = self._pool_of(engine)
        if pool is not None and pool.replicas[engine].state is not state:
            log.info("engine %s is %s", engine, state.value)
            pool.set_state(engine, state)

    def quarantine(self, pool: EnginePool, replica: str) -> None:
        """Passive health check: a replica that failed a request it never received gets
        no requests for QUARANTINE_S (or until the supervisor reports on it), so a
        crashed replica cannot drain the shared queue into instant failures. Its pool's
        queue waits meanwhile: one refused connection is a suspicion, and only the
        supervisor's word that it is down refuses what waits for it."""
        slot = pool.replicas.get(replica)
        if slot is None or slot.state is not EngineState.UP:
            return
        log.warning(
            "engine %s failed a request it never received: quarantined for %.0fs",
            replica,
            QUARANTINE_S,
        )
        pool.set_state(replica, EngineState.QUARANTINED)
        self._metrics.child(self._metrics.quarantines, replica).inc()

        def restore() -> None:
            current = self._pool_of(replica)
            if current is not None and current.replicas[replica].state is EngineState.QUARANTINED:
                state = self.states.get(replica, EngineState.STARTING)
                current.set_state(replica, state)

        with contextlib.suppress(RuntimeError):  # no running loop (pure unit use)
            asyncio.get_running_loop().call_later(QUARANTINE_S, restore)
