"""What a decision sees and says: a pool's pods at one instant, and the decision with its reason."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Direction(enum.StrEnum):
    """Which way a decision moves the replicas (the ``direction`` metric label)."""

    UP = "up"
    DOWN = "down"
    NONE = "none"


class Limit(enum.StrEnum):
    """What kept the desired replicas from being the raw need."""

    TOLERANCE = "tolerance"
    SCALE_UP_WINDOW = "scale_up_window"
    SCALE_DOWN_WINDOW = "scale_down_window"
    SCALE_UP_POLICY = "scale_up_policy"
    SCALE_DOWN_POLICY = "scale_down_policy"
    MAX_REPLICAS = "max_replicas"
    MIN_REPLICAS = "min_replicas"
    UNKNOWN_LOAD = "unknown_load"


@dataclass(frozen=True, slots=True, kw_only=True)
class PodView:
    """One builder pod as the controller saw it this cycle."""

    name: str
    active_builds: int | None
    """Builds running on it; None when unknown (sidecar unreadable, buildkitd unknown)."""

    ready: bool = True
    """Informational (see the module docstring)."""

    terminating: bool = False
    """Being deleted (has a deletionTimestamp): not capacity, its builds still count."""

    draining: bool = False
    """Its sidecar is draining: takes no new builds, so not capacity; its builds still count."""

    @property
    def parked(self) -> bool:
        """Draining while still counted in the Deployment's replicas (not being deleted)."""
        return self.draining and not self.terminating


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """A pool at one instant."""

    current_replicas: int
    """``spec.replicas`` of the Deployment's scale subresource."""

    pods: tuple[PodView, ...] = ()
    """Every builder pod of the pool, terminating ones included."""


def pod_view(
    *,
    name: str,
    started: bool,
    active_builds: int | None,
    ready: bool = True,
    terminating: bool = False,
    draining: bool = False,
) -> PodView:
    """One pod as a decision must count it; the one mapping the controller and the simulator share.

    A pod not started yet (Pending, no sidecar to ask) cannot have builds: it counts as 0
    active builds and not ready, never as unknown (unknown would count it busy and scale up
    for nothing). Otherwise ``active_builds`` is what its sidecar reported, None if unreadable.
    """
    if not started:
        return PodView(name=name, active_builds=0, ready=False, terminating=terminating)
    return PodView(name=name, active_builds=active_builds, ready=ready, terminating=terminating, draining=draining)


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do with one pool, and why."""

    current_replicas: int
    desired_replicas: int
    """Set the scale to this (equal to current: do nothing)."""

    recommended_replicas: int
    """The need before tolerance, windows, rate limits and the [min, max] clamp: the
    ``recommended_replicas`` metric; above maxReplicas means demand exceeds the pool."""

    recommendation: int
    """The need after tolerance: the sample :meth:`History.record` keeps for the windows."""

    direction: Direction
    limits: tuple[Limit, ...]
    """What held the desired replicas away from the need, in pipeline order."""

    active_builds: int
    """Known active builds over all pods (terminating and draining ones included)."""

    unknown_pods: int
    """Pods whose load is unknown (each counted as targetBuildsPerReplica builds)."""

    reason: str
    """For logs and Events, e.g. ``4 active builds, 2 per replica, +1 spare → 3; scale 2 → 3``."""
