"""What a cycle tells about each pool: its metrics, and the ``decision`` / ``pool_summary`` log lines."""

from __future__ import annotations

import structlog

from autoscaler.controller.metrics import Metrics
from autoscaler.controller.pools import PoolState
from autoscaler.policy import Decision

log = structlog.get_logger("autoscaler.controller")

SUMMARY_INTERVAL_SECONDS = 300.0
"""How often each pool's ``pool_summary`` line is written while nothing changes: a held pool
still says what it sees, at 12 lines an hour per pool."""


def log_decision(state: PoolState, decision: Decision, *, unknown: dict[str, str], now: float) -> None:
    """``decision`` when what it says changes; ``pool_summary`` at most every SUMMARY_INTERVAL_SECONDS."""
    fields = {
        "pool": state.pool.name,
        "current": decision.current_replicas,
        "desired": decision.desired_replicas,
        "recommended": decision.recommended_replicas,
        "active_builds": decision.active_builds,
        "limits": [limit.value for limit in decision.limits],
        "unknown_pods": unknown,
        "min_replicas": state.pool.min_replicas,
        "max_replicas": state.pool.max_replicas,
    }
    said = (decision.current_replicas, decision.desired_replicas, decision.limits, tuple(sorted(unknown.items())))
    if said != state.logged:
        state.logged = said
        log.info("decision", **fields, reason=decision.reason)
    elif state.summarized_at is None or now - state.summarized_at >= SUMMARY_INTERVAL_SECONDS:
        log.info("pool_summary", **fields, reason=decision.reason)
    else:
        return
    state.summarized_at = now


def export(metrics: Metrics, state: PoolState, decision: Decision) -> None:
    """The pool's gauges from this cycle's decision."""
    m = metrics
    name = state.pool.name
    m.active_builds.labels(pool=name).set(decision.active_builds)
    m.current_replicas.labels(pool=name).set(decision.current_replicas)
    m.desired_replicas.labels(pool=name).set(decision.desired_replicas)
    m.recommended_replicas.labels(pool=name).set(decision.recommended_replicas)
    m.unreadable_pods.labels(pool=name).set(decision.unknown_pods)
