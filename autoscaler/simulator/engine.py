"""What-if simulation: replay a build trace against a config, on virtual time.

The fleet is modelled as it behaves behind the router (or a layer-4 load balancer), and the
autoscaler is the real one: every ``pollIntervalSeconds`` each pool is
observed and a :class:`autoscaler.policy.PoolStepper` (the live controller's own
stepper over its pure decision, not a copy) sets its replicas.

The model, per pool (pools are independent: a build goes to the pool of its arch):

* **Routing.** Behind the router (``router``, the default: :mod:`.routing`), a new build
  goes through one of K routers to a builder in the first load tier that router's stale
  view has one in, by leastconn over its own connections; with no usable builder it fails
  (or waits in an optional router queue). Otherwise it goes to a *ready* builder: one at
  random (``random``, as a layer-4 balancer spreads connections) or the one with the
  fewest builds (``least-connections``; ties to the oldest); with no ready builder the
  build waits (clients retry) and is routed, in arrival order, the moment one becomes ready.
* **Capacity sharing.** A builder runs every build it is given; with n builds
  on a builder of capacity c each progresses at min(1, c/n) of full speed.
* **Start-up.** A new pod is ready ``startup_seconds`` after its creation.
* **Scale-down** is the ReplicaSet's (:mod:`autoscaler.policy.replicaset`, the model
  the e2e fleet uses too): pods not ready yet go first, then the lowest
  ``pod-deletion-cost``, which the controller sets from what it observed
  (:func:`autoscaler.policy.deletion_cost`: idle builders first), then the most
  recently ready, then the newest. A removed pod takes no new
  builds and drains: it is deleted the moment its last build ends (at once if
  idle; behind the router, not before one agent interval after its drain began,
  since a router may still send it a build until its next poll); a drain that
  would exceed ``drain_timeout_seconds`` is cut there, and the builds still
  running are *interrupted*.

Decisions taken where the issue is silent:

* Events at the same instant happen in this order: builds end, drain
  deadlines, drained pods go, pods become ready, the routers' agent polls and
  timers, builds arrive, the controller observes. So a build that ends exactly
  at the drain deadline is not interrupted, and a build arriving at a poll is
  seen by it.
* Slowdown is (end − submission) ÷ unloaded duration: the time a developer
  waits, so a wait for a ready builder counts. Interrupted and failed builds
  have none; failed builds are left out of the lower bound too (work never asked
  of the fleet's builders).
* The fleet starts warm: each pool with the replicas its policy keeps when
  idle (``spareReplicas`` within [min, max]), ready at second 0.
* Every pool is simulated until the last build of the whole trace has ended,
  so the pools' costs cover the same span.
* ``peak_replicas`` is the highest ``spec.replicas`` (for the total: of their
  sum), draining pods not included; their cost is in ``builder_seconds``.
* The baselines are in :mod:`autoscaler.simulator.runs`.
* Percentiles are nearest-rank: always a value that occurred.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Sequence

from autoscaler.config import Pool
from autoscaler.policy import Observation, PodView, PoolStepper, deletion_cost, pod_view
from autoscaler.policy.replicaset import Candidate, victims
from autoscaler.simulator.fleet import Fleet
from autoscaler.simulator.model import FleetModel, SimulationError
from autoscaler.simulator.outcome import Outcome, PoolRun, Series, cost_and_delays
from autoscaler.simulator.pods import PodState, Priority, SimPod
from autoscaler.simulator.trace import Build

_END, _DEADLINE, _RELEASE, _READY = Priority.END, Priority.DEADLINE, Priority.RELEASE, Priority.READY
_STARTING, _SERVING, _DRAINING, _GONE = PodState.STARTING, PodState.SERVING, PodState.DRAINING, PodState.GONE


class PoolSim(Fleet):
    """A :class:`Fleet` with its controller (a :class:`PoolStepper` every poll), the ReplicaSet
    that carries out its scales, and the event loop; ``static_replicas``: no controller."""

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
        super().__init__(pool=pool, builds=builds, model=model)
        self.poll_interval = poll_interval_seconds
        self.static = static_replicas is not None
        self.next_poll = math.inf if self.static else 0.0
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
            if model.warm_start:
                self._ready(pod, 0.0, known_since=-math.inf)
            elif model.startup_seconds == 0:
                self._ready(pod, 0.0)
            else:
                self._push(model.startup_seconds, _READY, pod)
        self.stepper = PoolStepper(pool)
        self.stepper.start(now=0.0, current_replicas=replicas)
        self.series: Series | None = None
        if record_series:
            self.series = Series(times=[], active_builds=[], replicas=[], capacity=[], scale_times=[], scale_to=[])

    # -- the controller and the ReplicaSet --------------------------------------

    def _view(self, pod: SimPod) -> PodView:
        view = pod.view
        if view is None:
            # A starting pod is Pending to the controller; a draining one is being deleted (preStop).
            draining = pod.state == _DRAINING
            view = pod_view(name=pod.name, started=pod.state != _STARTING, active_builds=len(pod.builds),
                            terminating=draining, draining=draining)  # fmt: skip
            pod.view = view
        return view

    def _poll(self, now: float) -> None:
        observation = self.observation
        if observation is None:
            observation = Observation(current_replicas=self.replicas, pods=tuple(self._view(p) for p in self.pods))
            self.observation = observation
        decision = self.stepper.step(observation, now=now)
        desired = decision.desired_replicas
        if desired != self.replicas:
            self.stepper.scaled(now=now, from_replicas=self.replicas, to_replicas=desired)
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
                        self._ready(pod, now, seen_at_once=False)  # after this instant's agent polls
            self.replicas = desired
            self.observation = None
            if self.series is not None:
                self.series.scale_times.append(now)
                self.series.scale_to.append(desired)

    def _scale_down(self, count: int, now: float) -> None:
        """Remove ``count`` pods as the ReplicaSet ranks them (:mod:`autoscaler.policy.replicaset`)."""
        alive = [p for p in self.pods if p.state in (_STARTING, _SERVING)]
        for pod in victims(alive, count, candidate=self._candidate):
            if pod.state == _STARTING or (not pod.builds and self.drain_min == 0):
                self._delete(pod, now)  # nothing to drain: gone at once (its ready event finds it gone)
                continue
            pod.advance(now)
            pod.state = _DRAINING
            pod.drain_started = now
            pod.release_at = now + self.drain_min
            pod.view = None
            self.serving.remove(pod)
            self._push(now + self.model.drain_timeout_seconds, _DEADLINE, pod, pod.version)
            if self.drain_min > 0:
                self._push(pod.release_at, _RELEASE, pod)

    def _candidate(self, pod: SimPod) -> Candidate:
        serving = pod.state == _SERVING
        return Candidate(
            running=serving,
            ready=serving,
            deletion_cost=deletion_cost(self._view(pod)),
            ready_since=pod.ready_at if serving else None,
            created_at=pod.created,
        )

    def _sample(self, now: float) -> None:
        series = self.series
        if series is None:
            return
        queued = sum(len(q) for q in self.routers.queues) if self.routers is not None else 0
        active = len(self.waiting) + queued + self.running
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
        timers = self.routers.timers if self.routers is not None else []
        while True:
            next_event = events[0] if events else None
            t_event = next_event[0] if next_event is not None else inf
            t_timer = timers[0][0] if timers else inf
            t_arrival = arrivals[self.next_arrival] if self.next_arrival < n else inf
            t_poll = self.next_poll
            if self.remaining == 0 and self.next_arrival >= n:
                # Every build has ended: go on only to reach ``until``, with the controller running.
                stop = until
                if min(t_event, t_poll) > stop:
                    break
            # Ties: events first (their priorities are all below the rest), then the routers'
            # timers, then arrivals, then polls.
            if next_event is not None and t_event <= t_timer and t_event <= t_arrival and t_event <= t_poll:
                at, priority, _, pod, version = heapq.heappop(events)
                self.now = at
                if priority == _END:
                    if version == pod.version and pod.state != _GONE:
                        self._end_builds(pod, at)
                elif priority == _DEADLINE:
                    if pod.state == _DRAINING:
                        self._deadline(pod, at)
                elif priority == _RELEASE:
                    self._release(pod, at)
                elif priority == _READY and pod.state == _STARTING:
                    self._ready(pod, at)
            elif timers and t_timer <= t_arrival and t_timer <= t_poll:
                self.now = t_timer
                self._timer(t_timer)
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


def pool_run(sim: PoolSim, *, end: float) -> PoolRun:
    """What ``sim`` measured, counting pods still alive up to ``end``."""
    pods = [*sim.gone, *sim.pods]
    for pod in sim.pods:
        pod.advance(end)
    cost = sum(min(p.deleted, end) - p.created for p in pods)
    overloaded = sum(p.overloaded for p in pods)
    starting = sum(min(p.ready_at, p.deleted, end) - p.created for p in pods)
    draining = sum(max(0.0, min(p.deleted, end) - p.drain_started) for p in pods)
    durations = sim.durations
    slowdowns: list[float] = []
    waits: list[float] = []
    interrupted = 0
    failed = 0
    failed_seconds = 0.0
    ended = 0
    for i, start in enumerate(sim.arrivals):
        end_at = sim.ended_at[i]
        if math.isnan(end_at):
            continue
        if sim.end_counts[i] == 1:
            ended += 1
        if sim.failed[i]:
            failed += 1
            failed_seconds += durations[i]
            continue
        wait = sim.dispatched[i] - start
        if wait > 0:
            waits.append(wait)
        if sim.interrupted[i]:
            interrupted += 1
        else:
            slowdowns.append((end_at - start) / durations[i])
    slowdowns.sort()
    waits.sort()
    build_seconds = math.fsum(durations) - failed_seconds
    lower = build_seconds / sim.capacity
    metrics = Outcome(
        **cost_and_delays(cost=cost, lower=lower, slowdowns=slowdowns, waits=waits),
        overloaded_builder_seconds=overloaded,
        starting_builder_seconds=starting,
        idle_builder_seconds=sum(p.idle for p in pods),
        busy_builder_seconds=sum(p.busy for p in pods),
        draining_builder_seconds=draining,
        scale_events=sim.scale_events,
        peak_replicas=max(r for _, r in sim.scales),
        interrupted_builds=interrupted,
        failed_builds=failed,
    )
    return PoolRun(
        name=sim.pool.name,
        arch=sim.pool.arch,
        metrics=metrics,
        slowdowns=slowdowns,
        waits=waits,
        build_seconds=build_seconds,
        capacity=sim.capacity,
        scales=sim.scales,
        series=sim.series,
        cut_work_seconds=sim.cut_work,
        ended=ended,
        builds=len(sim.arrivals),
    )
