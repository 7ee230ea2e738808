"""What-if simulation: replay a build trace against a config, on virtual time.

The fleet is modelled as it behaves behind a layer-4 load balancer, and the
autoscaler is the real one: every ``pollIntervalSeconds`` each pool is
observed and :func:`autoscaler.policy.decide` (the live controller's own pure
decision, not a copy) sets its replicas; the history is kept the way the
controller keeps it (:meth:`History.start`, ``record``, ``scaled``).

The model, per pool (pools are independent: a build goes to the pool of its arch):

* **Routing.** A new build goes to a *ready* builder: one at random (the
  default, as a layer-4 balancer spreads connections) or the one with the
  fewest builds (``least-connections``; ties to the oldest). With no ready
  builder the build waits (clients retry) and is routed, in arrival order,
  the moment one becomes ready.
* **Capacity sharing.** A builder runs every build it is given; with n builds
  on a builder of capacity c each progresses at min(1, c/n) of full speed.
* **Start-up.** A new pod is ready ``startup_seconds`` after its creation.
* **Scale-down** is the ReplicaSet's: pods not ready yet go first, then the
  lowest ``pod-deletion-cost``, which the controller sets from what it
  observed (:func:`autoscaler.controller.deletion_cost`: idle builders first),
  then the most recently ready, then the newest. A removed pod takes no new
  builds and drains: it is deleted the moment its last build ends (at once if
  idle); a drain that would exceed ``drain_timeout_seconds`` is cut there, and
  the builds still running are *interrupted*.

Decisions taken where the issue is silent:

* Events at the same instant happen in this order: builds end, drain
  deadlines, pods become ready, builds arrive, the controller observes. So a
  build that ends exactly at the drain deadline is not interrupted, and a
  build arriving at a poll is seen by it.
* Slowdown is (end − submission) ÷ unloaded duration: the time a developer
  waits, so a wait for a ready builder counts. Interrupted builds have none.
* The fleet starts warm: each pool with the replicas its policy keeps when
  idle (``spareReplicas`` within [min, max]), ready at second 0.
* Every pool is simulated until the last build of the whole trace has ended,
  so the pools' costs cover the same span.
* ``peak_replicas`` is the highest ``spec.replicas`` (for the total: of their
  sum), draining pods not included; their cost is in ``builder_seconds``.
* The static baseline runs ceil(peak concurrent builds ÷ capacity) ready
  builders per pool for the whole span (the trace's own peak, not capped at
  ``maxReplicas``); the HPA baseline is the same pool with HPA's default
  ``behavior`` (:class:`ScaleUpRules` and :class:`ScaleDownRules` defaults).
* Percentiles are nearest-rank: always a value that occurred.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

from autoscaler.config import Config, Pool, ScaleDownRules, ScaleUpRules
from autoscaler.controller import deletion_cost
from autoscaler.policy import History, Observation, PodView, decide
from autoscaler.trace import Build, Trace

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


# --- metrics --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Metrics:
    """One pool's (or the total's) outcome: the ``M`` of ``report.json``."""

    builder_seconds: float
    """Cost: every pod from creation to deletion, starting and draining included."""
    lower_bound_builder_seconds: float
    """Σ unloaded build seconds ÷ capacity: no fleet can cost less."""
    efficiency: float | None
    """Lower bound ÷ cost (1 is perfect); None without cost."""
    slowdown_p50: float | None
    slowdown_p95: float | None
    slowdown_max: float | None
    """(end − submission) ÷ unloaded duration over completed builds; None without any."""
    waited_builds: int
    """Builds that found no ready builder and waited for one."""
    wait_p95_seconds: float
    wait_max_seconds: float
    """Over the builds that waited (0 when none did)."""
    overloaded_builder_seconds: float
    """Builder-seconds spent with more builds than capacity (everything on them slower)."""
    starting_builder_seconds: float
    """Where the cost went, part 1 of 4: pods from creation until ready (or deleted first)."""
    idle_builder_seconds: float
    """Part 2: ready builders taking builds but running none (spares, windows, the night)."""
    busy_builder_seconds: float
    """Part 3: ready builders running at least one build."""
    draining_builder_seconds: float
    """Part 4: removed pods finishing their builds. The four parts add up to ``builder_seconds``."""
    scale_events: int
    """Replica changes the controller made."""
    peak_replicas: int
    interrupted_builds: int
    """Builds cut by a drain that reached its deadline."""

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "builder_seconds": self.builder_seconds,
            "lower_bound_builder_seconds": self.lower_bound_builder_seconds,
            "efficiency": self.efficiency,
            "slowdown_p50": self.slowdown_p50,
            "slowdown_p95": self.slowdown_p95,
            "slowdown_max": self.slowdown_max,
            "waited_builds": self.waited_builds,
            "wait_p95_seconds": self.wait_p95_seconds,
            "wait_max_seconds": self.wait_max_seconds,
            "overloaded_builder_seconds": self.overloaded_builder_seconds,
            "starting_builder_seconds": self.starting_builder_seconds,
            "idle_builder_seconds": self.idle_builder_seconds,
            "busy_builder_seconds": self.busy_builder_seconds,
            "draining_builder_seconds": self.draining_builder_seconds,
            "scale_events": self.scale_events,
            "peak_replicas": self.peak_replicas,
            "interrupted_builds": self.interrupted_builds,
        }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence (None if empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass(frozen=True, kw_only=True)
class Series:
    """One pool over time, for the chart: a sample at each poll where something changed."""

    times: list[float]
    active_builds: list[int]
    """Submitted and not ended: running (draining pods included) plus waiting."""
    replicas: list[int]
    """``spec.replicas``."""
    capacity: list[int]
    """Ready builders × capacity: builds that can run at full speed."""
    scale_times: list[float]
    scale_to: list[int]


@dataclass(frozen=True, kw_only=True)
class PoolRun:
    """One pool's simulation."""

    name: str
    arch: str
    metrics: Metrics
    slowdowns: list[float]
    """Per completed build, ascending."""
    waits: list[float]
    """Per build that waited, ascending."""
    build_seconds: float
    capacity: int
    scales: list[tuple[float, int]]
    """(time, new replicas) of each scale, with the initial replicas at time 0 first."""
    series: Series | None
    cut_work_seconds: float
    """Build-seconds interrupted builds never ran (so cost × capacity ≥ build seconds − this)."""
    ended: int
    """Builds that ended exactly once (completed or interrupted): should be every build."""
    builds: int


@dataclass(frozen=True, kw_only=True)
class Run:
    """Every pool of one config (or baseline) on one trace."""

    pools: dict[str, PoolRun]
    total: Metrics
    span_seconds: float
    """Simulated time: from the trace's start to the end of its last build."""

    def as_dict(self) -> dict[str, object]:
        return {
            "pools": {name: run.metrics.as_dict() for name, run in self.pools.items()},
            "total": self.total.as_dict(),
        }


@dataclass(frozen=True, kw_only=True)
class Report:
    """A config's run next to the two baselines."""

    run: Run
    static_peak: Run
    hpa_default: Run

    def as_dict(self) -> dict[str, object]:
        """The ``report.json`` layout: ``{"pools": {name: M}, "total": M, "baselines": {...: M}}``."""
        return {
            **self.run.as_dict(),
            "baselines": {
                "static_peak": self.static_peak.total.as_dict(),
                "hpa_default": self.hpa_default.total.as_dict(),
            },
        }


# --- one pool on virtual time ---------------------------------------------------------------------

# Event priorities at one instant (see the module docstring).
_END, _DEADLINE, _READY, _ARRIVAL, _POLL = 0, 1, 2, 3, 4
_STARTING, _SERVING, _DRAINING, _GONE = 0, 1, 2, 3


class _Pod:
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


class _PoolSim:
    """One pool and its builds; ``pool`` None: static replicas (no controller)."""

    def __init__(
        self,
        *,
        pool: Pool,
        builds: Sequence[Build],
        model: FleetModel,
        poll_interval_seconds: float,
        static_replicas: int | None = None,
        record_series: bool = False,
    ) -> None:
        self.pool = pool
        self.model = model
        self.capacity = model.capacity_of(pool)
        self.poll_interval = poll_interval_seconds
        self.static = static_replicas is not None
        self.arrivals = [b.start_seconds for b in builds]
        self.durations = [b.duration_seconds for b in builds]
        n = len(builds)
        self.dispatched = [math.nan] * n
        self.ended_at = [math.nan] * n
        self.interrupted = [False] * n
        self.end_counts = [0] * n
        self.running = 0
        """Builds on pods (draining ones included): the chart's active builds, less the waiting."""
        self.cut_work = 0.0
        """Unloaded build-seconds never run: what interrupted builds still had to do."""
        self.remaining = n
        self.next_arrival = 0
        self.rng = random.Random(model.seed)  # noqa: S311 - reproducible routing, not secrecy
        self.events: list[tuple[float, int, int, _Pod, int]] = []
        self.seq = 0
        self.pods: list[_Pod] = []
        """Alive pods (starting, serving, draining), oldest first."""
        self.serving: list[_Pod] = []
        self.gone: list[_Pod] = []
        self.waiting: deque[int] = deque()
        self.created = 0
        self.now = 0.0
        self.next_poll = math.inf if self.static else 0.0
        self.observation: Observation | None = None
        self.scale_events = 0
        self.scales: list[tuple[float, int]] = []
        replicas = (
            static_replicas
            if static_replicas is not None
            else min(max(pool.spare_replicas, pool.min_replicas), pool.max_replicas)
        )
        self.replicas = replicas
        self.scales.append((0.0, replicas))
        for _ in range(replicas):
            pod = self._create(0.0)
            if model.warm_start or model.startup_seconds == 0:
                self._ready(pod, 0.0)
            else:
                self._push(model.startup_seconds, _READY, pod)
        self.history = History.start(pool, now=0.0, current_replicas=replicas)
        self.series: Series | None = None
        if record_series:
            self.series = Series(times=[], active_builds=[], replicas=[], capacity=[], scale_times=[], scale_to=[])

    # -- events -----------------------------------------------------------

    def _push(self, at: float, priority: int, pod: _Pod, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, priority, self.seq, pod, version))

    def _schedule_end(self, pod: _Pod) -> None:
        pod.version += 1
        pod.view = None
        self.observation = None
        at = pod.next_end()
        if at != math.inf:
            self._push(at, _END, pod, pod.version)

    def _create(self, now: float) -> _Pod:
        self.created += 1
        pod = _Pod(name=f"{self.pool.name}-{self.created}", created=now, capacity=self.capacity)
        self.pods.append(pod)
        self.observation = None
        return pod

    def _ready(self, pod: _Pod, now: float) -> None:
        pod.advance(now)
        pod.state = _SERVING
        pod.ready_at = now
        pod.view = None
        self.observation = None
        self.serving.append(pod)
        self._dispatch_waiting(now)

    def _dispatch_waiting(self, now: float) -> None:
        """Route waiting builds, oldest first, while a ready builder takes them."""
        waiting = self.waiting
        while waiting and self._place(waiting[0], now):
            waiting.popleft()

    def _delete(self, pod: _Pod, now: float) -> None:
        pod.advance(now)
        pod.state = _GONE
        pod.deleted = now
        pod.version += 1
        self.pods.remove(pod)
        if pod in self.serving:
            self.serving.remove(pod)
        self.gone.append(pod)
        self.observation = None

    def _route(self, build: int, now: float) -> None:
        """A new build: onto a ready builder, or waiting for one."""
        if not self._place(build, now):
            self.waiting.append(build)

    def _place(self, build: int, now: float) -> bool:
        """Start ``build`` on a ready builder that may take it; False if none may."""
        serving = self.serving
        if self.model.admission:
            serving = [p for p in serving if len(p.builds) < self.capacity]
        if not serving:
            return False
        if self.model.routing == "random":
            pod = serving[self.rng.randrange(len(serving))] if len(serving) > 1 else serving[0]
        else:
            pod = min(serving, key=lambda p: len(p.builds))
        pod.advance(now)
        self.dispatched[build] = now
        self.running += 1
        heapq.heappush(pod.builds, (pod.work + self.durations[build], build))
        self._schedule_end(pod)
        return True

    def _end_builds(self, pod: _Pod, now: float) -> None:
        pod.advance(now)
        builds = pod.builds
        slack = 1e-9 * max(1.0, pod.work)
        while builds and builds[0][0] <= pod.work + slack:
            _, build = heapq.heappop(builds)
            self.ended_at[build] = now
            self.end_counts[build] += 1
            self.remaining -= 1
            self.running -= 1
        if pod.state == _DRAINING and not builds:
            self._delete(pod, now)
        else:
            self._schedule_end(pod)
            if self.waiting and pod.state == _SERVING:
                self._dispatch_waiting(now)

    def _deadline(self, pod: _Pod, now: float) -> None:
        pod.advance(now)
        for done_at, build in pod.builds:
            self.cut_work += done_at - pod.work
            self.ended_at[build] = now
            self.interrupted[build] = True
            self.end_counts[build] += 1
            self.remaining -= 1
            self.running -= 1
        pod.builds.clear()
        self._delete(pod, now)

    # -- the controller and the ReplicaSet --------------------------------------

    def _view(self, pod: _Pod) -> PodView:
        view = pod.view
        if view is None:
            if pod.state == _STARTING:
                # As the controller sees a Pending pod: no builds yet, not asked.
                view = PodView(name=pod.name, active_builds=0, ready=False)
            elif pod.state == _DRAINING:
                view = PodView(name=pod.name, active_builds=len(pod.builds), terminating=True, draining=True)
            else:
                view = PodView(name=pod.name, active_builds=len(pod.builds))
            pod.view = view
        return view

    def _poll(self, now: float) -> None:
        observation = self.observation
        if observation is None:
            observation = Observation(current_replicas=self.replicas, pods=tuple(self._view(p) for p in self.pods))
            self.observation = observation
        decision = decide(observation, self.pool, self.history, now)
        self.history = self.history.record(now, decision.recommendation)
        desired = decision.desired_replicas
        if desired != self.replicas:
            self.history = self.history.scaled(now, self.replicas, desired)
            self.scale_events += 1
            self.scales.append((now, desired))
            if desired < self.replicas:
                self._scale_down(self.replicas - desired, now)
            else:
                for _ in range(desired - self.replicas):
                    pod = self._create(now)
                    if self.model.startup_seconds > 0:
                        self._push(now + self.model.startup_seconds, _READY, pod)
                    else:
                        self._ready(pod, now)
            self.replicas = desired
            self.observation = None
            if self.series is not None:
                self.series.scale_times.append(now)
                self.series.scale_to.append(desired)

    def _scale_down(self, count: int, now: float) -> None:
        """Remove ``count`` pods as the ReplicaSet ranks them (controller.deletion_cost)."""
        candidates = [p for p in self.pods if p.state in (_STARTING, _SERVING)]
        candidates.sort(key=lambda p: (p.state == _SERVING, deletion_cost(self._view(p)), -p.ready_at, -p.created))
        for pod in candidates[:count]:
            if pod.state == _STARTING or not pod.builds:
                self._delete(pod, now)  # nothing to drain: gone at once (its ready event finds it gone)
                continue
            pod.advance(now)
            pod.state = _DRAINING
            pod.drain_started = now
            pod.view = None
            self.serving.remove(pod)
            self._push(now + self.model.drain_timeout_seconds, _DEADLINE, pod, pod.version)

    def _sample(self, now: float) -> None:
        series = self.series
        if series is None:
            return
        active = len(self.waiting) + self.running
        capacity = len(self.serving) * self.capacity
        if series.times and (
            series.active_builds[-1] == active
            and series.replicas[-1] == self.replicas
            and series.capacity[-1] == capacity
        ):
            return
        series.times.append(now)
        series.active_builds.append(active)
        series.replicas.append(self.replicas)
        series.capacity.append(capacity)

    # -- the loop -----------------------------------------------------------

    def run(self, *, until: float = -math.inf, progress: Callable[[float], None] | None = None) -> float:
        """Simulate until every build has ended and ``until`` is reached; return the last event's time."""
        arrivals = self.arrivals
        n = len(arrivals)
        events = self.events
        inf = math.inf
        polls = 0
        give_up_at = self._give_up_at()
        while True:
            next_event = events[0] if events else None
            t_event = next_event[0] if next_event is not None else inf
            t_arrival = arrivals[self.next_arrival] if self.next_arrival < n else inf
            t_poll = self.next_poll
            if self.remaining == 0 and self.next_arrival >= n:
                # Every build has ended: go on only to reach ``until``, with the controller running.
                stop = until
                if min(t_event, t_poll) > stop:
                    break
            # Ties: events first (their priorities are all below arrivals and polls), then arrivals, then polls.
            if next_event is not None and t_event <= t_arrival and t_event <= t_poll:
                at, priority, _, pod, version = heapq.heappop(events)
                self.now = at
                if priority == _END:
                    if version == pod.version and pod.state != _GONE:
                        self._end_builds(pod, at)
                elif priority == _DEADLINE:
                    if pod.state == _DRAINING:
                        self._deadline(pod, at)
                elif priority == _READY and pod.state == _STARTING:
                    self._ready(pod, at)
            elif t_arrival <= t_poll:
                build = self.next_arrival
                self.next_arrival += 1
                self.now = t_arrival
                self._route(build, t_arrival)
            elif t_poll != inf:
                self.now = t_poll
                self._poll(t_poll)
                self._sample(t_poll)
                self.next_poll = t_poll + self.poll_interval
                polls += 1
                if progress is not None and polls % 2000 == 0:
                    progress(t_poll)
            else:
                break  # static: nothing left to happen
            if self.now > give_up_at:
                raise SimulationError(
                    f"pool {self.pool.name}: {self.remaining} builds ({len(self.waiting)} waiting for a ready "
                    f"builder) still not ended {self.now - (arrivals[-1] if arrivals else 0):.0f} s after the "
                    "last arrival: the fleet never catches up"
                )
        return self.now

    def _give_up_at(self) -> float:
        """A run this far past the last arrival never ends (a pool that cannot scale up)."""
        last = self.arrivals[-1] if self.arrivals else 0.0
        longest = max(self.durations, default=0.0)
        return last + 100 * (longest + self.pool.history_seconds + self.model.startup_seconds) + 86400

    def result(self, *, end: float) -> PoolRun:
        """The pool's metrics, counting pods still alive up to ``end``."""
        pods = [*self.gone, *self.pods]
        for pod in self.pods:
            pod.advance(end)
        cost = sum(min(p.deleted, end) - p.created for p in pods)
        overloaded = sum(p.overloaded for p in pods)
        starting = sum(min(p.ready_at, p.deleted, end) - p.created for p in pods)
        draining = sum(max(0.0, min(p.deleted, end) - p.drain_started) for p in pods)
        durations = self.durations
        slowdowns: list[float] = []
        waits: list[float] = []
        interrupted = 0
        ended = 0
        for i, start in enumerate(self.arrivals):
            end_at = self.ended_at[i]
            if math.isnan(end_at):
                continue
            if self.end_counts[i] == 1:
                ended += 1
            wait = self.dispatched[i] - start
            if wait > 0:
                waits.append(wait)
            if self.interrupted[i]:
                interrupted += 1
            else:
                slowdowns.append((end_at - start) / durations[i])
        slowdowns.sort()
        waits.sort()
        build_seconds = math.fsum(durations)
        lower = build_seconds / self.capacity
        metrics = Metrics(
            **_cost_and_delays(cost=cost, lower=lower, slowdowns=slowdowns, waits=waits),
            overloaded_builder_seconds=overloaded,
            starting_builder_seconds=starting,
            idle_builder_seconds=sum(p.idle for p in pods),
            busy_builder_seconds=sum(p.busy for p in pods),
            draining_builder_seconds=draining,
            scale_events=self.scale_events,
            peak_replicas=max(r for _, r in self.scales),
            interrupted_builds=interrupted,
        )
        return PoolRun(
            name=self.pool.name,
            arch=self.pool.arch,
            metrics=metrics,
            slowdowns=slowdowns,
            waits=waits,
            build_seconds=build_seconds,
            capacity=self.capacity,
            scales=self.scales,
            series=self.series,
            cut_work_seconds=self.cut_work,
            ended=ended,
            builds=len(self.arrivals),
        )


# --- runs -----------------------------------------------------------------------------------------


def builds_by_pool(config: Config, trace: Trace) -> dict[str, list[Build]]:
    """Each pool's builds (by arch); :class:`SimulationError` for an arch no pool (or two) serves."""
    by_arch: dict[str, list[str]] = {}
    for pool in config.pools:
        by_arch.setdefault(pool.arch, []).append(pool.name)
    problems: list[str] = []
    for arch, names in by_arch.items():
        if len(names) > 1:
            problems.append(f"arch {arch} is served by several pools ({', '.join(names)}): the simulator needs one")
    missing = [a for a in trace.archs if a not in by_arch]
    if missing:
        problems.append(f"the trace has builds for {', '.join(missing)}, which no pool serves")
    if problems:
        raise SimulationError("; ".join(problems))
    result: dict[str, list[Build]] = {p.name: [] for p in config.pools}
    for build in trace.builds:
        result[by_arch[build.arch][0]].append(build)
    return result


def peak_concurrency(builds: Sequence[Build]) -> int:
    """The most builds running at once if each ran unloaded from its start (an end frees its slot
    before a start at the same instant takes it)."""
    edges = sorted(
        [(b.start_seconds + b.duration_seconds, -1) for b in builds] + [(b.start_seconds, 1) for b in builds]
    )
    peak = running = 0
    for _, change in edges:
        running += change
        peak = max(peak, running)
    return peak


def hpa_default(pool: Pool) -> Pool:
    """The same pool with HPA's default ``behavior`` (300 s scale-down window, default policies)."""
    return pool.model_copy(update={"scale_up": ScaleUpRules(), "scale_down": ScaleDownRules()})


Variant = Literal["config", "static_peak", "hpa_default"]


def run(
    config: Config,
    trace: Trace,
    *,
    model: FleetModel,
    variant: Variant = "config",
    record_series: bool = False,
    progress: Callable[[float], None] | None = None,
) -> Run:
    """Simulate every pool of ``config`` (or a baseline made from it) on ``trace``."""
    per_pool = builds_by_pool(config, trace)
    sims: list[_PoolSim] = []
    for pool in config.pools:
        builds = per_pool[pool.name]
        static = None
        effective = pool
        if variant == "static_peak":
            static = max(1, math.ceil(peak_concurrency(builds) / model.capacity_of(pool)))
        elif variant == "hpa_default":
            effective = hpa_default(pool)
        sims.append(
            _PoolSim(
                pool=effective,
                builds=builds,
                model=model,
                poll_interval_seconds=config.poll_interval_seconds,
                static_replicas=static,
                record_series=record_series,
            )
        )
    done = 0.0
    offset = 0.0
    span_hint = max(trace.span_seconds, 1.0) * len(sims)

    def report(at: float) -> None:
        if progress is not None:
            progress(min(1.0, (offset + at) / span_hint))

    end = 0.0
    for sim in sims:
        end = max(end, sim.run(progress=report if progress else None))
        offset += max(trace.span_seconds, 1.0)
        done += 1
    for sim in sims:
        sim.run(until=end)
    if progress is not None:
        progress(1.0)
    pools = {sim.pool.name: sim.result(end=end) for sim in sims}
    return Run(pools=pools, total=_total(list(pools.values())), span_seconds=end)


def _cost_and_delays(*, cost: float, lower: float, slowdowns: list[float], waits: list[float]) -> dict[str, Any]:
    """The Metrics fields derived the same way for a pool and for the total (both lists sorted)."""
    return {
        "builder_seconds": cost,
        "lower_bound_builder_seconds": lower,
        "efficiency": lower / cost if cost > 0 else None,
        "slowdown_p50": percentile(slowdowns, 50),
        "slowdown_p95": percentile(slowdowns, 95),
        "slowdown_max": slowdowns[-1] if slowdowns else None,
        "waited_builds": len(waits),
        "wait_p95_seconds": percentile(waits, 95) or 0.0,
        "wait_max_seconds": waits[-1] if waits else 0.0,
    }


def _total(runs: Sequence[PoolRun]) -> Metrics:
    slowdowns = sorted(s for r in runs for s in r.slowdowns)
    waits = sorted(w for r in runs for w in r.waits)
    cost = sum(r.metrics.builder_seconds for r in runs)
    lower = sum(r.metrics.lower_bound_builder_seconds for r in runs)
    return Metrics(
        **_cost_and_delays(cost=cost, lower=lower, slowdowns=slowdowns, waits=waits),
        overloaded_builder_seconds=sum(r.metrics.overloaded_builder_seconds for r in runs),
        starting_builder_seconds=sum(r.metrics.starting_builder_seconds for r in runs),
        idle_builder_seconds=sum(r.metrics.idle_builder_seconds for r in runs),
        busy_builder_seconds=sum(r.metrics.busy_builder_seconds for r in runs),
        draining_builder_seconds=sum(r.metrics.draining_builder_seconds for r in runs),
        scale_events=sum(r.metrics.scale_events for r in runs),
        peak_replicas=_peak_of_sum(runs),
        interrupted_builds=sum(r.metrics.interrupted_builds for r in runs),
    )


def _peak_of_sum(runs: Sequence[PoolRun]) -> int:
    """The highest total ``spec.replicas``: pools are polled at the same instants, so every
    change of one instant is applied before the sum is read."""
    changes = sorted((at, i, replicas) for i, r in enumerate(runs) for at, replicas in r.scales)
    current = [0] * len(runs)
    peak = 0
    k = 0
    while k < len(changes):
        at = changes[k][0]
        while k < len(changes) and changes[k][0] == at:
            _, i, replicas = changes[k]
            current[i] = replicas
            k += 1
        peak = max(peak, sum(current))
    return peak


def simulate(
    config: Config,
    trace: Trace,
    *,
    model: FleetModel,
    progress: Callable[[float], None] | None = None,
    parallel: bool = False,
) -> Report:
    """The config's run (with the chart's series) and both baselines, on the same trace.

    ``parallel``: run the baselines in a child process meanwhile (the HPA baseline costs as
    much as the config's run; a week of 100k builds then takes half the time on two cores).
    """
    if parallel:
        with ProcessPoolExecutor(max_workers=1) as executor:
            baselines = executor.submit(_baselines, config, trace, model)
            main = run(config, trace, model=model, record_series=True, progress=progress)
            hpa, static = baselines.result()
        return Report(run=main, static_peak=static, hpa_default=hpa)

    def part(index: int) -> Callable[[float], None] | None:
        if progress is None:
            return None
        return lambda fraction: progress((index + fraction) / 3)

    main = run(config, trace, model=model, record_series=True, progress=part(0))
    hpa = run(config, trace, model=model, variant="hpa_default", progress=part(1))
    static = run(config, trace, model=model, variant="static_peak", progress=part(2))
    return Report(run=main, static_peak=static, hpa_default=hpa)


def _baselines(config: Config, trace: Trace, model: FleetModel) -> tuple[Run, Run]:
    """(hpa_default, static_peak): what :func:`simulate` runs in its child process."""
    return (
        run(config, trace, model=model, variant="hpa_default"),
        run(config, trace, model=model, variant="static_peak"),
    )


def check_invariants(config: Config, result: Run) -> list[str]:
    """What does not hold of ``result``: every build ended exactly once, cost ≥ the lower bound
    (of the work that ran, when builds were interrupted) and the sum of its four parts,
    replicas within [min, max]."""
    problems: list[str] = []
    for pool in config.pools:
        pool_run = result.pools[pool.name]
        m = pool_run.metrics
        if pool_run.ended != pool_run.builds:
            problems.append(f"{pool.name}: {pool_run.ended} of {pool_run.builds} builds ended exactly once")
        # Interrupted builds never ran their whole duration: the bound is on the work that ran.
        ran = (pool_run.build_seconds - pool_run.cut_work_seconds) / pool_run.capacity
        slack = 1e-6 * max(1.0, ran)
        if m.builder_seconds + slack < ran:
            problems.append(f"{pool.name}: cost {m.builder_seconds} below the work that ran, {ran}")
        parts = (
            m.starting_builder_seconds + m.idle_builder_seconds + m.busy_builder_seconds + m.draining_builder_seconds
        )
        if abs(parts - m.builder_seconds) > 1e-6 * max(1.0, m.builder_seconds):
            problems.append(f"{pool.name}: cost {m.builder_seconds} is not the sum of its parts, {parts}")
        if m.interrupted_builds == 0 and m.builder_seconds + slack < m.lower_bound_builder_seconds:
            problems.append(f"{pool.name}: cost {m.builder_seconds} below {m.lower_bound_builder_seconds}")
        for at, replicas in pool_run.scales:
            if not pool.min_replicas <= replicas <= pool.max_replicas:
                problems.append(
                    f"{pool.name}: {replicas} replicas at {at} outside [{pool.min_replicas}, {pool.max_replicas}]"
                )
    return problems
