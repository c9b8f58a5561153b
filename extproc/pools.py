"""The engine pools a policy asks for: created, updated in place, or dropped."""

from __future__ import annotations

from collections.abc import Callable

from fairlane.extproc.admission import EnginePool
from fairlane.extproc.pacing import AdmissionPacer
from fairlane.extproc.replicas import EngineState
from fairlane.extproc.runtime import Runtime
from fairlane.extproc.scheduling import make_scheduler


def sync_pools(
    pools: dict[str, EnginePool],
    runtime: Runtime,
    engine_states: dict[str, EngineState],
    clock: Callable[[], float],
) -> None:
    """Make ``pools`` match the policy. Existing pools keep their slots, queues and fair
    counters; a new scheduler kind replaces the old only in a pool with nothing queued
    (the queued requests are the old scheduler's); a pool gone from the policy is dropped
    once it is drained."""
    policy = runtime.policy
    for name, replicas in runtime.pools.items():
        config = runtime.pool_config(name)
        pool = pools.get(name)
        if pool is None or (pool.scheduler_kind != config.scheduler and not pool.queued):
            scheduler = make_scheduler(
                config.scheduler,
                max_queue_per_tenant=config.queue.max_per_tenant,
                max_queue_total=config.queue.max_total,
            )
            if pool is None:
                capacities = {r: policy.engines[r].max_inflight for r in replicas}
                pool = pools[name] = EnginePool(name, scheduler, capacities, clock)
                for replica in replicas:
                    pool.set_state(replica, engine_states.get(replica, EngineState.STARTING))
            else:
                pool.scheduler = scheduler
            pool.scheduler_kind = config.scheduler
        # Bounds apply to the requests queued from now on (those waiting stay).
        pool.scheduler.max_queue_per_tenant = config.queue.max_per_tenant
        pool.scheduler.max_queue_total = config.queue.max_total
        # FIFO means arrival order for everyone: no slots held back for anyone.
        pool.headroom = config.headroom if config.scheduler == "fair" else 0.0
        pool.shares.linger_s = config.linger_s
        pacing = config.pacing if config.scheduler == "fair" else 0.0
        if not pacing:
            pool.pacing.pacer = None
        elif pool.pacing.pacer is None or pool.pacing.pacer.factor != pacing:
            slots = sum(policy.engines[r].max_inflight for r in replicas)
            pool.pacing.pacer = AdmissionPacer.for_pool(pacing, clock(), slots)
        for replica in replicas:
            if policy.engines[replica].adaptive is None:
                pool.set_capacity(replica, policy.engines[replica].max_inflight)
    for name in list(pools):
        pool = pools[name]
        if name not in runtime.pools and not pool.inflight and not pool.queued:
            del pools[name]
