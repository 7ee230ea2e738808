"""A pool's pods and builds on virtual time: the fleet half of the simulation (see :mod:`.engine`).

Builds are routed to ready builders, share a builder's capacity, and end; pods start,
become ready, drain and go. Which pods exist is the controller's and the ReplicaSet's
business (:class:`autoscaler.simulator.engine.PoolSim`).
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import Sequence

from autoscaler.config import Pool
from autoscaler.policy import Observation
from autoscaler.simulator.model import FleetModel
from autoscaler.simulator.pods import PodState, Priority, SimPod
from autoscaler.simulator.trace import Build

_END, _DEADLINE, _READY = Priority.END, Priority.DEADLINE, Priority.READY
_STARTING, _SERVING, _DRAINING, _GONE = PodState.STARTING, PodState.SERVING, PodState.DRAINING, PodState.GONE


class Fleet:
    """One pool's pods and builds on virtual time: routing, capacity sharing, start-up, drains."""

    def __init__(
        self,
        *,
        pool: Pool,
        builds: Sequence[Build],
        model: FleetModel,
    ) -> None:
        self.pool = pool
        self.model = model
        self.capacity = model.capacity_of(pool)
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
        self.events: list[tuple[float, int, int, SimPod, int]] = []
        self.seq = 0
        self.pods: list[SimPod] = []
        """Alive pods (starting, serving, draining), oldest first."""
        self.serving: list[SimPod] = []
        self.gone: list[SimPod] = []
        self.waiting: deque[int] = deque()
        self.created = 0
        self.now = 0.0
        self.observation: Observation | None = None
        """What the controller saw at its last poll; any change to the pods clears it."""

    # -- events -----------------------------------------------------------

    def _push(self, at: float, priority: int, pod: SimPod, version: int = 0) -> None:
        self.seq += 1
        heapq.heappush(self.events, (at, priority, self.seq, pod, version))

    def _schedule_end(self, pod: SimPod) -> None:
        pod.version += 1
        pod.view = None
        self.observation = None
        at = pod.next_end()
        if at != math.inf:
            self._push(at, _END, pod, pod.version)

    def _create(self, now: float) -> SimPod:
        self.created += 1
        pod = SimPod(name=f"{self.pool.name}-{self.created}", created=now, capacity=self.capacity)
        self.pods.append(pod)
        self.observation = None
        return pod

    def _ready(self, pod: SimPod, now: float) -> None:
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

    def _delete(self, pod: SimPod, now: float) -> None:
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

    def _end_builds(self, pod: SimPod, now: float) -> None:
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

    def _deadline(self, pod: SimPod, now: float) -> None:
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
