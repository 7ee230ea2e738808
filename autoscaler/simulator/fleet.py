"""A pool's pods and builds on virtual time: the fleet half of the simulation (see :mod:`.engine`).

Builds are routed to ready builders (behind the router: :mod:`.routing`), share a builder's
capacity, and end, or fail when the router has no builder for them; pods start, become ready,
drain and go. Which pods exist is the controller's and the ReplicaSet's business
(:class:`autoscaler.simulator.engine.PoolSim`).
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
from autoscaler.simulator.routing import GIVE_UP, WAKE, Routers
from autoscaler.simulator.trace import Build

_END, _DEADLINE, _RELEASE, _READY = Priority.END, Priority.DEADLINE, Priority.RELEASE, Priority.READY
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
        self.failed = [False] * n
        """Builds the router had no builder for (never ran, cost nothing)."""
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
        self.routers: Routers | None = None
        """Behind the router (``routing`` ``router``): its K replicas; None otherwise."""
        self.drain_min = 0.0
        """A removed pod lives at least this long after its drain began: one agent interval behind
        the router (the sidecar's minimum drain covers the routers' stale view), else 0."""
        self.conn_slot = [-1] * n
        """Per build placed by the router: its connection (:meth:`Routers.connect`)."""
        self.router_of = [-1] * n
        """Per build behind the router: the replica it reached."""
        self.pod_of: list[SimPod | None] = [None] * n
        """Per build: the pod it ran on (None: not placed, or failed)."""
        if model.routing == "router":
            self.routers = Routers(model=model, slots=pool.target_builds_per_replica, key=pool.name)
            self.drain_min = model.agent_interval_seconds
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

    def _ready(self, pod: SimPod, now: float, *, known_since: float | None = None, seen_at_once: bool = True) -> None:
        """``pod`` is ready at ``now``; the routers see it from ``known_since`` (default ``now``;
        -inf: a warm fleet's pod, ready before the trace began), at a poll at that very instant
        only if ``seen_at_once``."""
        pod.advance(now)
        pod.state = _SERVING
        pod.ready_at = now
        pod.view = None
        self.observation = None
        self.serving.append(pod)
        routers = self.routers
        if routers is None:
            self._dispatch_waiting(now)
            return
        routers.appear(pod, now if known_since is None else known_since, seen_at_once=seen_at_once)
        for router, queue in enumerate(routers.queues):
            if queue:
                routers.wake_when_seen(router, [pod], now)

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
        if self.routers is not None:
            self.routers.forget(pod)

    def _route(self, build: int, now: float) -> None:
        """A new build: onto a ready builder, or waiting for one (behind the router: through one
        router, or waiting in its queue, or failed)."""
        routers = self.routers
        if routers is None:
            if not self._place(build, now):
                self.waiting.append(build)
            return
        router = self.rng.randrange(routers.count) if routers.count > 1 else 0
        self.router_of[build] = router
        queue = routers.queues[router]
        if queue:
            self._wake(router, now)
        if not queue and self._place_through(router, build, now):
            return
        if routers.wait_limit <= 0:
            self._fail(build, now)
            return
        queue.append(build)
        routers.timer(now + routers.wait_limit, GIVE_UP, build)
        if len(queue) == 1:
            routers.wake_when_seen(router, self.serving, now)

    def _place_through(self, router: int, build: int, now: float) -> bool:
        """Start ``build`` where ``router`` sends it; False if it has no usable builder."""
        routers = self.routers
        assert routers is not None  # noqa: S101 - behind the router only
        choice = routers.pick(router, self.pods, now)
        if choice is None:
            return False
        pod, tier = choice
        self.conn_slot[build] = routers.connect(pod, router, tier)
        self._start(build, pod, now)
        return True

    def _wake(self, router: int, now: float) -> None:
        """Place ``router``'s queued builds, first come first served, while it has a usable builder."""
        routers = self.routers
        assert routers is not None  # noqa: S101 - behind the router only
        queue = routers.queues[router]
        while queue and self._place_through(router, queue[0], now):
            queue.popleft()

    def _give_up(self, build: int, now: float) -> None:
        """``build``'s wait for a usable builder ran out: failed, if it still waits."""
        routers = self.routers
        assert routers is not None  # noqa: S101 - behind the router only
        if not math.isnan(self.dispatched[build]) or self.failed[build]:
            return
        routers.queues[self.router_of[build]].remove(build)
        self._fail(build, now)

    def _timer(self, now: float) -> None:
        """The routers' next timer: a queue to wake, or a queued build's time running out."""
        routers = self.routers
        assert routers is not None  # noqa: S101 - only the router sets timers
        _, kind, _, payload = heapq.heappop(routers.timers)
        if kind == WAKE:
            self._wake(payload, now)
        elif kind == GIVE_UP:
            self._give_up(payload, now)

    def _fail(self, build: int, now: float) -> None:
        self.failed[build] = True
        self.ended_at[build] = now
        self.end_counts[build] += 1
        self.remaining -= 1

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
        self._start(build, pod, now)
        return True

    def _start(self, build: int, pod: SimPod, now: float) -> None:
        pod.advance(now)
        self.pod_of[build] = pod
        self.dispatched[build] = now
        self.running += 1
        heapq.heappush(pod.builds, (pod.work + self.durations[build], build))
        self._schedule_end(pod)
        if self.routers is not None:
            # Placed after this instant's agent polls: a poll now does not see it.
            self.routers.record(pod, math.nextafter(now, math.inf))

    def _end_builds(self, pod: SimPod, now: float) -> None:
        pod.advance(now)
        builds = pod.builds
        slack = 1e-9 * max(1.0, pod.work)
        routers = self.routers
        while builds and builds[0][0] <= pod.work + slack:
            _, build = heapq.heappop(builds)
            self.ended_at[build] = now
            self.end_counts[build] += 1
            self.remaining -= 1
            self.running -= 1
            if routers is not None:
                routers.disconnect(pod, self.conn_slot[build])
        if routers is not None:
            routers.record(pod, now)
        if pod.state == _DRAINING and not builds and now >= pod.release_at:
            self._delete(pod, now)
        else:
            self._schedule_end(pod)
            if self.waiting and pod.state == _SERVING:
                self._dispatch_waiting(now)

    def _release(self, pod: SimPod, now: float) -> None:
        """A drained pod's minimum drain is over: deleted if its builds have ended."""
        if pod.state == _DRAINING and not pod.builds:
            self._delete(pod, now)

    def _deadline(self, pod: SimPod, now: float) -> None:
        pod.advance(now)
        for done_at, build in pod.builds:
            self.cut_work += done_at - pod.work
            self.ended_at[build] = now
            self.interrupted[build] = True
            self.end_counts[build] += 1
            self.remaining -= 1
            self.running -= 1
        pod.builds.clear()  # the routers forget the pod with its connections: it is deleted
        self._delete(pod, now)
