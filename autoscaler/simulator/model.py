"""What the simulated fleet is: the routing, builder capacity, start-up and drain deadline it assumes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from autoscaler.config import Pool

Routing = Literal["router", "random", "least-connections"]
ROUTINGS: tuple[Routing, ...] = ("router", "random", "least-connections")
"""The first is the default: what ``deploy/`` ships."""


class SimulationError(ValueError):
    """The trace and the config do not fit together (an arch without a pool, ...)."""


@dataclass(frozen=True, kw_only=True)
class FleetModel:
    """How the simulated fleet behaves; the defaults are a typical cloud cluster's behind the shipped router."""

    routing: Routing = "router"
    """``router``: the HAProxy router ``deploy/`` ships, per arch, fed by the sidecars' agents
    (:mod:`autoscaler.simulator.routing`; the default); ``random``: a layer-4 load balancer
    spreads new connections blindly (a plain Service: kube-proxy and most cloud balancers);
    ``least-connections``: an idealisation that sees every builder's true build count at once
    (IPVS ``lc`` or an L4 balancer that counts open connections, alone in front of the fleet)."""

    routers: int = 2
    """``router`` only: router replicas per arch; a cloud L4 balancer in front of them hands
    each new build to one of them at random. Each counts only its own connections."""

    agent_interval_seconds: float = 1.0
    """``router`` only: each router polls each builder's agent this often (``agent-inter``)."""

    client_deadline_seconds: float = 20.0
    """``router`` only: buildx gives a connection this long (gRPC's ``minConnectTimeout``);
    a build whose connection would wait longer fails."""

    router_queue_seconds: float = 0.0
    """``router`` only: 0 (shipped): a router with no usable builder rejects a build at once
    (a *failed* build). > 0: the build waits up to this long (and never past the client's
    deadline) for a usable builder, and fails if none comes."""

    agent_phase: float | None = None
    """``router`` only, for tests: None, each (router, builder) agent check runs at its own
    phase drawn from ``seed``; a fraction in [0, 1): every check runs at that fraction of the
    interval (all in step). Not on the command line."""

    capacity: int | None = None
    """Builds a builder runs at full speed; None: the pool's ``targetBuildsPerReplica``
    (the config's own statement of what a builder carries)."""

    startup_seconds: float = 60.0
    """From pod creation to ready: 60 s for node provisioning and the image pull."""

    drain_timeout_seconds: float = 3300.0
    """The sidecar's drain deadline (its default, 55 min): a drain that would last
    longer is cut, interrupting the builds still running."""

    seed: int = 0
    """Seed of random routing, of the router a build reaches and of the agents' phases:
    the same inputs give the same report."""

    warm_start: bool = True
    """The pods a pool keeps when idle are ready at second 0 (a running fleet). False: they
    are created at second 0 and ready after ``startup_seconds`` (a fresh cluster)."""

    admission: bool = False
    """True: a builder at capacity takes no new build, as if it left the balancer the instant it
    filled (an *ideal* load-aware readiness); a build that finds every ready builder full waits,
    in arrival order, for a free slot. No part of the fleet does this today: ``bench/frontier.py``
    uses it to show what load-aware routing could give at best; it is not on the command line. The
    waiting builds are invisible to the controller, so a pool with ``spareReplicas`` 0 does
    not grow for them: they wait for running builds to end. Not with ``router``."""

    def __post_init__(self) -> None:
        problems = []
        if self.routing not in ROUTINGS:
            problems.append(f"routing must be one of {', '.join(ROUTINGS)}, not {self.routing!r}")
        if self.routers < 1:
            problems.append(f"routers must be ≥ 1, not {self.routers}")
        for name in ("agent_interval_seconds", "client_deadline_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                problems.append(f"{name} must be a number > 0, not {value}")
        if not (math.isfinite(self.router_queue_seconds) and self.router_queue_seconds >= 0):
            problems.append(f"router_queue_seconds must be a number ≥ 0, not {self.router_queue_seconds}")
        if self.agent_phase is not None and not 0 <= self.agent_phase < 1:
            problems.append(f"agent_phase must be in [0, 1), not {self.agent_phase}")
        if self.admission and self.routing == "router":
            problems.append("admission is an idealisation of random or least-connections routing, not the router's")
        if problems:
            raise ValueError("; ".join(problems))

    def capacity_of(self, pool: Pool) -> int:
        return self.capacity if self.capacity is not None else pool.target_builds_per_replica
