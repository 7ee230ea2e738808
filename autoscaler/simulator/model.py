"""What the simulated fleet is: the routing, builder capacity, start-up and drain deadline it assumes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from autoscaler.config import Pool

Routing = Literal["random", "least-connections"]
ROUTINGS: tuple[Routing, ...] = ("random", "least-connections")


class SimulationError(ValueError):
    """The trace and the config do not fit together (an arch without a pool, ...)."""


@dataclass(frozen=True, kw_only=True)
class FleetModel:
    """How the simulated fleet behaves; the defaults are a typical cloud cluster's."""

    routing: Routing = "random"
    """``random``: a layer-4 load balancer spreads new connections blindly (the
    default: kube-proxy and most cloud balancers do); ``least-connections``: IPVS
    ``lc`` or an L4 balancer that counts open connections."""

    capacity: int | None = None
    """Builds a builder runs at full speed; None: the pool's ``targetBuildsPerReplica``
    (the config's own statement of what a builder carries)."""

    startup_seconds: float = 60.0
    """From pod creation to ready: 60 s for node provisioning and the image pull."""

    drain_timeout_seconds: float = 3300.0
    """The sidecar's drain deadline (its default, 55 min): a drain that would last
    longer is cut, interrupting the builds still running."""

    seed: int = 0
    """Seed of random routing: the same inputs give the same report."""

    warm_start: bool = True
    """The pods a pool keeps when idle are ready at second 0 (a running fleet). False: they
    are created at second 0 and ready after ``startup_seconds`` (a fresh cluster)."""

    admission: bool = False
    """True: a builder at capacity takes no new build, as if it left the balancer the instant it
    filled (an *ideal* load-aware readiness); a build that finds every ready builder full waits,
    in arrival order, for a free slot. No part of the fleet does this today: ``bench/frontier.py``
    uses it to show what load-aware routing could give at best; it is not on the command line. The
    waiting builds are invisible to the controller, so a pool with ``spareReplicas`` 0 does
    not grow for them: they wait for running builds to end."""

    def capacity_of(self, pool: Pool) -> int:
        return self.capacity if self.capacity is not None else pool.target_builds_per_replica
