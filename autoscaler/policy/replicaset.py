"""Which pods a ReplicaSet deletes first on a scale-down: the one model of it, for the simulator and the e2e fleet.

Kubernetes ranks a ReplicaSet's pods for deletion (``ActivePodsWithRanks`` in
``pkg/controller/controller_utils.go``); the parts that matter for builders, in order:

1. not yet running (unscheduled, Pending) before running;
2. not ready before ready;
3. lower ``controller.kubernetes.io/pod-deletion-cost`` first (what the controller sets
   from :func:`autoscaler.policy.stepper.deletion_cost`: idle builders first);
4. ready for the shorter time first;
5. newer first.

(Kubernetes also ranks by co-located pods and restart counts; neither exists in our models.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Candidate:
    """What the ReplicaSet knows of a pod when it picks victims."""

    running: bool
    ready: bool
    deletion_cost: int
    ready_since: float | None
    """When it became ready (any clock); None when not ready."""
    created_at: float


def victim_rank(candidate: Candidate) -> tuple[bool, bool, int, float, float]:
    """Sort key: the first in ascending order is deleted first."""
    return (
        candidate.running,
        candidate.ready,
        candidate.deletion_cost,
        -(candidate.ready_since if candidate.ready_since is not None else 0.0),
        -candidate.created_at,
    )


def victims(pods: Sequence[T], count: int, *, candidate: Callable[[T], Candidate]) -> list[T]:
    """The ``count`` pods the ReplicaSet deletes, in its order (stable: ties keep ``pods``' order)."""
    if count <= 0:
        return []
    return sorted(pods, key=lambda pod: victim_rank(candidate(pod)))[:count]
