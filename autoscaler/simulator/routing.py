"""The router model: K HAProxy replicas per pool place each build by load tier, then leastconn on own connections.

What ``deploy/`` ships per arch (the router contract of issue 11), as the simulator models it:

* **K routers.** ``FleetModel.routers`` replicas; a cloud L4 balancer in front of them hands each
  new build to one of them uniformly at random (the fleet's seeded RNG). A build is one
  connection through that router, held from its placement to its end (or its interruption).
* **Agents, and how stale a router's view is.** Each router polls each builder's agent every
  ``agent_interval_seconds`` and, between two polls, sees the builder as it was at the last one:
  its true active-build count (every router's builds count, as the sidecar counts them) and
  whether it drains. *Choice:* each (router, builder) pair polls on a fixed period with its own
  phase, drawn uniformly in [0, interval) from the seed (``FleetModel.agent_phase`` fixes one
  phase for all, for tests); the three tier backends' checks of one builder share that phase
  (HAProxy runs them as three tasks: a simplification). A poll at an instant sees the builds
  that ended and the pods that became ready at that instant, not the builds placed or the
  drains begun then.
* **Discovery.** Only ready builders are in the headless Service's DNS: a builder enters a
  router's view at that router's first poll of it at or after it became ready (up to one
  interval late). A warm fleet's builders were ready before the trace began: every router
  knows them from the start.
* **Tiers.** The router uses the first tier with at least one usable builder *in its view*:
  ``idle`` (0 builds), ``free`` (builds < slots), ``any`` (every builder that is up); slots is
  the pool's ``targetBuildsPerReplica`` (the sidecar's ``--build-slots``). The agent's weight
  (percent of ``weight 100``) is, per tier, 100; ceil(100 × (slots − builds) ÷ slots);
  max(1, floor(100 × slots ÷ (slots + builds))); ``drain`` (weight 0) where the builder is
  not in the tier, and in every tier while it drains.
* **leastconn within a tier.** The builder with the lowest (own + 1) ÷ weight, where *own* is
  the connections this router placed on it **through this tier's backend** (each backend's
  server is its own HAProxy object with its own count), and a builder with own = 0 comes
  first whatever its weight. Ties: the oldest builder (lowest index, stable). Exact ratios,
  not HAProxy's integer keys.
* **Drain.** A draining builder answers ``drain``: a router stops choosing it at its first poll
  after the drain began (within one interval); builds placed on it before run there (and are
  interrupted if the drain deadline hits). The sidecar's minimum drain covers that window: a
  removed pod is deleted no sooner than one agent interval after its drain began, idle or not
  (:attr:`SimPod.release_at`).
* **No usable builder.** No queue (shipped): the build is rejected at once, a *failed* build,
  which never runs and costs nothing. With ``router_queue_seconds`` > 0, it waits in its
  router, first come first served, until a builder enters that router's view, and fails if
  none does within the queue's time or the client's deadline (``client_deadline_seconds``),
  whichever is shorter. A builder that enters the view exactly at that limit still takes it.
"""

from __future__ import annotations

import heapq
import math
import random
from bisect import bisect_right
from collections import deque

from autoscaler.simulator.model import FleetModel
from autoscaler.simulator.pods import SimPod

TIERS = ("idle", "free", "any")
IDLE, FREE, ANY = 0, 1, 2
FULL_WEIGHT = 100
"""``weight 100`` on every server: an agent's ``P%`` sets the weight to P."""
EPSILON = 1e-9
"""In intervals: an instant this close below a poll counts as at it (floating-point slack)."""
WAKE, GIVE_UP = 0, 1
"""Timer kinds, in their order at one instant: a builder entering a view takes a queued
build before that build's time runs out."""


def tier_weights(builds: int, slots: int) -> tuple[int | None, int | None, int]:
    """What a builder running ``builds`` answers each tier's agent check: its weight, None for ``drain``."""
    idle = FULL_WEIGHT if builds == 0 else None
    free = -(-FULL_WEIGHT * (slots - builds) // slots) if builds < slots else None
    return idle, free, max(1, FULL_WEIGHT * slots // (slots + builds))


class Agent:
    """What the routers know of one builder: when each polls it, its build counts over time, and
    each router's own connections to it per tier backend."""

    __slots__ = ("conns", "counts", "first", "phases", "times")

    def __init__(self, *, phases: list[float], first: list[float], since: float) -> None:
        self.phases = phases
        self.first = first
        """Per router: the index of its first poll that sees the builder ready (-inf: always)."""
        self.times = [since]
        self.counts = [0]
        """Active builds from ``times[i]`` on (a step function)."""
        self.conns = [0] * (3 * len(phases))
        """Index ``3 × router + tier``: that router's open connections through that tier's backend."""


class Routers:
    """One pool's K routers: what each sees of each builder, their own connections, and any queue."""

    def __init__(self, *, model: FleetModel, slots: int, key: str) -> None:
        self.count = model.routers
        self.interval = model.agent_interval_seconds
        self.slots = slots
        self.queue_seconds = model.router_queue_seconds
        self.wait_limit = min(model.router_queue_seconds, model.client_deadline_seconds)
        """How long a build waits in a router for a usable builder before it fails."""
        self.fixed_phase = model.agent_phase
        self.phase_rng = random.Random(f"agent-phases/{model.seed}/{key}")  # noqa: S311 - reproducible, not secret
        self.agents: dict[SimPod, Agent] = {}
        self.queues: list[deque[int]] = [deque() for _ in range(self.count)]
        self.timers: list[tuple[float, int, int, int]] = []
        """Heap of (at, kind, sequence, router for WAKE or build for GIVE_UP)."""
        self.seq = 0

    # -- the builders' agents ------------------------------------------------------

    def appear(self, pod: SimPod, since: float, *, seen_at_once: bool = True) -> Agent:
        """``pod`` became ready at ``since`` (-inf: before the trace began). ``seen_at_once``: a
        poll at ``since`` sees it (it became ready before that instant's polls; False: after,
        as a pod that starts in 0 s when the controller scales up)."""
        interval = self.interval
        if self.fixed_phase is not None:
            phases = [self.fixed_phase * interval] * self.count
        else:
            phases = [self.phase_rng.random() * interval for _ in range(self.count)]
        first: list[float] = []
        for phase in phases:
            at = (since - phase) / interval
            if since == -math.inf:
                first.append(-math.inf)
            else:
                first.append(float(math.ceil(at - EPSILON) if seen_at_once else math.floor(at + EPSILON) + 1))
        agent = Agent(phases=phases, first=first, since=since)
        self.agents[pod] = agent
        return agent

    def record(self, pod: SimPod, at: float) -> None:
        """``pod``'s build count changed at ``at`` (pass ``math.nextafter(now, inf)`` for a change
        that an agent poll at ``now`` does not see: a build placed then)."""
        agent = self.agents.get(pod)
        if agent is None:
            return
        times = agent.times
        if at <= times[-1]:
            agent.counts[-1] = len(pod.builds)
        else:
            times.append(at)
            agent.counts.append(len(pod.builds))

    def forget(self, pod: SimPod) -> None:
        """``pod`` is deleted: no router sees it any more."""
        self.agents.pop(pod, None)

    def first_seen(self, router: int, pod: SimPod) -> float:
        """When ``router`` first sees ``pod`` ready (-inf: always; inf: it never became ready)."""
        agent = self.agents.get(pod)
        if agent is None:
            return math.inf
        first = agent.first[router]
        return first if first == -math.inf else agent.phases[router] + first * self.interval

    # -- choosing -------------------------------------------------------------------

    def pick(self, router: int, pods: list[SimPod], now: float) -> tuple[SimPod, int] | None:
        """The builder ``router`` sends a new build to at ``now``, and the tier it chose it in;
        None when no builder is usable in its view. ``pods``: the alive pods, oldest first.

        Each builder is ranked in the highest tier it is in only: an idle builder makes the idle
        tier the one used, so its rank in the lower tiers never matters; likewise a free one."""
        interval = self.interval
        slots = self.slots
        base = 3 * router
        best: list[SimPod | None] = [None, None, None]
        keys = [math.inf, math.inf, math.inf]
        agents = self.agents
        for pod in pods:
            agent = agents.get(pod)
            if agent is None:
                continue
            phase = agent.phases[router]
            k = math.floor((now - phase) / interval + EPSILON)
            if k < agent.first[router]:
                continue  # not in this router's view yet
            seen_at = phase + k * interval
            if pod.drain_started < seen_at:
                continue  # answered drain
            times = agent.times
            builds = agent.counts[-1] if times[-1] <= seen_at else agent.counts[bisect_right(times, seen_at) - 1]
            if builds == 0:
                tier, weight = IDLE, FULL_WEIGHT
            elif builds < slots:
                tier, weight = FREE, -(-FULL_WEIGHT * (slots - builds) // slots)
            else:
                tier, weight = ANY, max(1, FULL_WEIGHT * slots // (slots + builds))
            own = agent.conns[base + tier]
            key = (own + 1) / weight if own else 0.0
            if key < keys[tier]:
                keys[tier] = key
                best[tier] = pod
        for tier, chosen in enumerate(best):
            if chosen is not None:
                return chosen, tier
        return None

    def connect(self, pod: SimPod, router: int, tier: int) -> int:
        """A connection through ``router``'s ``tier`` backend to ``pod``; returns its slot for :meth:`disconnect`."""
        slot = 3 * router + tier
        self.agents[pod].conns[slot] += 1
        return slot

    def disconnect(self, pod: SimPod, slot: int) -> None:
        agent = self.agents.get(pod)
        if agent is not None:
            agent.conns[slot] -= 1

    # -- the queue ------------------------------------------------------------------

    def timer(self, at: float, kind: int, payload: int) -> None:
        self.seq += 1
        heapq.heappush(self.timers, (at, kind, self.seq, payload))

    def wake_when_seen(self, router: int, pods: list[SimPod], now: float) -> None:
        """Wake ``router``'s queue when the first of ``pods`` (ready, not draining) enters its view."""
        at = min((self.first_seen(router, pod) for pod in pods), default=math.inf)
        if at != math.inf:
            self.timer(max(at, now), WAKE, router)
