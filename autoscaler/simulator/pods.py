"""A simulated builder pod: its state, and its builds progressing on a shared clock."""

from __future__ import annotations

import enum
import math

from autoscaler.policy import PodView


class Priority(enum.IntEnum):
    """Event priorities at one instant: builds end, drain deadlines, drained pods go, pods become
    ready, the routers' timers, builds arrive, the controller observes (see
    :mod:`autoscaler.simulator.engine`)."""

    END = 0
    DEADLINE = 1
    RELEASE = 2
    READY = 3
    TIMER = 4
    ARRIVAL = 5
    POLL = 6


class PodState(enum.IntEnum):
    """Where a pod is in its life."""

    STARTING = 0
    """Created, not ready yet (no builds; the controller sees it Pending)."""
    SERVING = 1
    """Ready, taking new builds."""
    DRAINING = 2
    """Removed by a scale-down: takes no new build, deleted when its last build ends (behind the
    router: not before one agent interval after the drain began, see :attr:`SimPod.release_at`)."""
    GONE = 3


# Module-level aliases: the event loop compares states millions of times.
_STARTING, _SERVING, _DRAINING, _GONE = PodState.STARTING, PodState.SERVING, PodState.DRAINING, PodState.GONE


class SimPod:
    """A builder pod: its builds progress on a shared clock ``work`` (each build's
    progress since the pod was created: every build on it runs at the same rate)."""

    __slots__ = (
        "builds",
        "busy",
        "capacity",
        "created",
        "deleted",
        "drain_started",
        "idle",
        "last",
        "name",
        "overloaded",
        "ready_at",
        "release_at",
        "state",
        "version",
        "view",
        "work",
    )

    def __init__(self, *, name: str, created: float, capacity: int) -> None:
        self.name = name
        self.created = created
        self.capacity = capacity
        self.ready_at = math.inf
        self.deleted = math.inf
        self.state = _STARTING
        self.builds: list[tuple[float, int]] = []
        """Heap of (work at which the build is done, build index)."""
        self.work = 0.0
        self.last = created
        self.version = 0
        self.overloaded = 0.0
        self.idle = 0.0
        """Seconds ready and serving with no build (kept up to ``last``)."""
        self.busy = 0.0
        """Seconds ready and serving with builds (kept up to ``last``)."""
        self.drain_started = math.inf
        self.release_at = math.inf
        """A draining pod without builds is deleted from this instant on (the sidecar's minimum drain)."""
        self.view: PodView | None = None

    def advance(self, now: float) -> None:
        """Move the shared clock to ``now`` (called before every change of builds or state)."""
        n = len(self.builds)
        if self.state == _SERVING:
            if n:
                self.busy += now - self.last
            else:
                self.idle += now - self.last
        if n:
            elapsed = now - self.last
            if n > self.capacity:
                self.work += elapsed * self.capacity / n
                self.overloaded += elapsed
            else:
                self.work += elapsed
        self.last = now

    def next_end(self) -> float:
        """When its next build ends, at the current rate (inf if idle)."""
        if not self.builds:
            return math.inf
        n = len(self.builds)
        rate = 1.0 if n <= self.capacity else self.capacity / n
        return self.last + max(0.0, self.builds[0][0] - self.work) / rate
