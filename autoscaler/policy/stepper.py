"""One pool, cycle after cycle: the stepper that owns its history, and the deletion cost it ranks pods by.

The live controller and the simulator both drive a pool through a :class:`PoolStepper`,
so the sequence a cycle follows (seed the history with the replicas first found, decide,
record the recommendation, record a scale the API accepted) is written once. Whatever
differs between them (how pods are observed, how a scale is carried out) stays outside.
"""

from __future__ import annotations

from autoscaler.config import Pool
from autoscaler.policy.decide import decide
from autoscaler.policy.history import History
from autoscaler.policy.views import Decision, Observation, PodView

UNKNOWN_LOAD_COST = 1_000_000
"""Deletion cost of a pod whose load is unknown: removed last, it may be busy."""

DRAINING_COST = -1
"""Deletion cost of a draining pod: removed first, it takes no new builds anyway."""


def deletion_cost(view: PodView) -> int:
    """``controller.kubernetes.io/pod-deletion-cost``: lower goes first.

    A draining builder first, then idle ones, then by running builds; unknown load last.
    """
    if view.active_builds is None:
        return UNKNOWN_LOAD_COST
    if view.draining:
        return DRAINING_COST
    return view.active_builds


class PoolStepper:
    """The decision state of one pool; call :meth:`step` once per cycle, :meth:`scaled` after a scale."""

    def __init__(self, pool: Pool, *, history: History | None = None) -> None:
        self.pool = pool
        self.history = history
        """None until the first step seeds it with the replicas found (as HPA does after a restart)."""

    def start(self, *, now: float, current_replicas: int) -> None:
        """Seed the history now (a fleet whose replicas are known before the first cycle)."""
        self.history = History.start(self.pool, now=now, current_replicas=current_replicas)

    def step(self, observation: Observation, *, now: float) -> Decision:
        """Decide this cycle (pure :func:`decide`) and record the recommendation for the windows."""
        if self.history is None:
            self.start(now=now, current_replicas=observation.current_replicas)
        assert self.history is not None  # noqa: S101 - seeded just above
        decision = decide(observation, self.pool, self.history, now)
        self.history = self.history.record(now, decision.recommendation)
        return decision

    def scaled(self, *, now: float, from_replicas: int, to_replicas: int) -> None:
        """A scale the API accepted (the rate-limit policies count it)."""
        if self.history is None:
            self.start(now=now, current_replicas=from_replicas)
        assert self.history is not None  # noqa: S101 - seeded just above
        self.history = self.history.scaled(now, from_replicas, to_replicas)

    def reconfigured(self, pool: Pool) -> PoolStepper:
        """The same pool under a reloaded config: the history carries over, with the new retention."""
        return PoolStepper(pool, history=self.history.reconfigured(pool) if self.history is not None else None)
